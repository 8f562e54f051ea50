#!/usr/bin/env node
// Stream a scene caption from ArBridge with @grpc/grpc-js, loading the
// contract straight from protos/ (no generated code).
//
//   node examples/node/describe_scene.js [host:port] [scene.json] [describe|ask]
//
// `ask` sends the file as an AskRequest (a dialogue turn: examples/act.json points
// at an object and declares scene actions) instead of a DescribeSceneRequest.
// Prints one JSON line per event as it arrives: {"t": ms, "chunk": "..."},
// {"t": ms, "action": {...}} for each scene action the reply calls, then
// {"t": ms, "completion": {...}}; {"t": ms, "resuming_after": seq} when a
// dropped connection is resumed; on an error {"code": N, "details": "..."} and
// exit status 1. ARBRIDGE_TOKEN, when set, is sent as a bearer token.
"use strict";

const path = require("path");
const fs = require("fs");
const grpc = require("@grpc/grpc-js");
const protoLoader = require("@grpc/proto-loader");

const root = path.join(__dirname, "..", "..", "protos");
const definition = protoLoader.loadSync("arbridge/v1/service.proto", {
  includeDirs: [root],
  keepCase: false,
  longs: Number,
  enums: String,
  defaults: false,
});
const arbridge = grpc.loadPackageDefinition(definition).arbridge.v1;

const target = process.argv[2] || "127.0.0.1:50051";
const sceneFile = process.argv[3] || path.join(__dirname, "..", "scene.json");
const request = JSON.parse(fs.readFileSync(sceneFile, "utf8"));
const method = process.argv[4] === "ask" ? "ask" : "describeScene";

const client = new arbridge.ArBridgeService(target, grpc.credentials.createInsecure());
const metadata = new grpc.Metadata();
if (process.env.ARBRIDGE_TOKEN) {
  metadata.set("authorization", `Bearer ${process.env.ARBRIDGE_TOKEN}`);
}

// Asked for as a resumable reply: when the connection drops mid-caption (the
// headset changed networks), Resume picks it up after the last seq received,
// so no text is lost or shown twice and nothing is generated again.
request.stream = { resumable: true };
const TRANSIENT = new Set([grpc.status.UNAVAILABLE, grpc.status.INTERNAL,
                           grpc.status.UNKNOWN, grpc.status.CANCELLED]);
const started = Date.now();
let streamId = "";
let lastSeq = 0;
let finished = false;
let attempts = 0;

function follow(call) {
  call.on("data", (event) => {
    const t = Date.now() - started;
    if (event.streamId) streamId = event.streamId;
    if (event.seq <= lastSeq) return;  // never shown twice
    lastSeq = event.seq;
    if (event.chunk) {
      console.log(JSON.stringify({ t, chunk: event.chunk.text }));
    } else if (event.action) {
      // Complete as it arrives: start the animation while the sentence goes on.
      console.log(JSON.stringify({ t, action: event.action }));
    } else if (event.completion) {
      finished = true;
      console.log(JSON.stringify({ t, completion: event.completion }));
    }
  });
  call.on("error", (err) => {
    if (!finished && streamId && TRANSIENT.has(err.code) && attempts < 5) {
      attempts += 1;
      const delay = 250 * 2 ** (attempts - 1);
      console.log(JSON.stringify({ t: Date.now() - started, resuming_after: lastSeq }));
      setTimeout(() => follow(client.resume({ streamId, afterSeq: lastSeq }, metadata,
                                            { deadline: new Date(Date.now() + 60000) })),
                 delay);
      return;
    }
    console.log(JSON.stringify({ code: err.code, details: err.details }));
    process.exitCode = 1;
    client.close();
  });
  call.on("end", () => { if (finished) client.close(); });
}

follow(client[method](request, metadata, { deadline: new Date(Date.now() + 60000) }));
