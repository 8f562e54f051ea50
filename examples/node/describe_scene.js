#!/usr/bin/env node
// Stream a scene caption from ArBridge with @grpc/grpc-js, loading the
// contract straight from protos/ (no generated code).
//
//   node examples/node/describe_scene.js [host:port] [scene.json]
//
// Prints one JSON line per event as it arrives: {"t": ms, "chunk": "..."},
// then {"t": ms, "completion": {...}}; on an error {"code": N, "details": "..."}
// and exit status 1. ARBRIDGE_TOKEN, when set, is sent as a bearer token.
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

const client = new arbridge.ArBridgeService(target, grpc.credentials.createInsecure());
const metadata = new grpc.Metadata();
if (process.env.ARBRIDGE_TOKEN) {
  metadata.set("authorization", `Bearer ${process.env.ARBRIDGE_TOKEN}`);
}

const started = Date.now();
const deadline = new Date(Date.now() + 60000);
const call = client.describeScene(request, metadata, { deadline });
call.on("data", (event) => {
  const t = Date.now() - started;
  if (event.chunk) {
    console.log(JSON.stringify({ t, chunk: event.chunk.text }));
  } else if (event.completion) {
    console.log(JSON.stringify({ t, completion: event.completion }));
  }
});
call.on("error", (err) => {
  console.log(JSON.stringify({ code: err.code, details: err.details }));
  process.exitCode = 1;
});
call.on("end", () => client.close());
