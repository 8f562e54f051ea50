// ArBridge's browser client: gRPC-Web over fetch, from code generated from protos/
// (protoc-gen-es) and Connect's gRPC-Web transport. This module is what a web or
// Unity WebGL developer would copy: no UI in it.
//
//   import { ArBridge } from "./client.js";
//   const bridge = new ArBridge({ baseUrl: "http://127.0.0.1:50052", token: "..." });
//   for await (const event of bridge.describeScene(request, { signal })) { ... }
//
// Each event is { chunk: TokenChunk } or { completion: Completion }; a failed call
// throws a ConnectError whose `code` is the gRPC status number (3 = INVALID_ARGUMENT)
// and whose `rawMessage` is the server's message ("scene.objects[0].label: ...").

import { create, fromJson, toJson } from "@bufbuild/protobuf";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-web";

import {
  ArBridgeService,
  AskRequestSchema,
  DescribeSceneRequestSchema,
  GetModelInfoRequestSchema,
} from "../gen/arbridge/v1/service_pb.js";
import { FinishReason } from "../gen/arbridge/v1/types_pb.js";

export { Code, ConnectError, DescribeSceneRequestSchema, FinishReason, create, fromJson, toJson };

export class ArBridge {
  /**
   * @param {{baseUrl: string, token?: string, binary?: boolean}} options
   *   baseUrl: the server's gRPC-Web port (`arbridge serve --grpc-web-port N`);
   *   token: sent as "authorization: Bearer <token>" when the server requires one;
   *   binary: application/grpc-web+proto (default) or, false, grpc-web-text.
   */
  constructor({ baseUrl, token = "", binary = true }) {
    this.token = token;
    const transport = createGrpcWebTransport({ baseUrl, useBinaryFormat: binary });
    this.client = createClient(ArBridgeService, transport);
  }

  _options(signal) {
    const headers = this.token ? { authorization: `Bearer ${this.token}` } : {};
    return { headers, signal };
  }

  /** The scene's caption, streamed: yields {chunk} events, then {completion}. */
  async *describeScene(request, { signal } = {}) {
    const message = isMessage(request) ? request : fromJson(DescribeSceneRequestSchema, request);
    for await (const response of this.client.describeScene(message, this._options(signal))) {
      yield event(response);
    }
  }

  /** One dialogue turn (Ask): the first call passes `start` (scene, history), later
   * ones the `sessionId` the server returned; yields events with `sessionId`. */
  async *ask({ sessionId = "", start, scene, text, sampling }, { signal } = {}) {
    const request = create(AskRequestSchema, {
      sessionId,
      start: start && !sessionId ? start : undefined,
      scene,
      userTurn: { text, sampling },
    });
    for await (const response of this.client.ask(request, this._options(signal))) {
      yield { ...event(response), sessionId: response.sessionId };
    }
  }

  async modelInfo({ signal } = {}) {
    return this.client.getModelInfo(create(GetModelInfoRequestSchema), this._options(signal));
  }
}

function isMessage(value) {
  return value && typeof value === "object" && typeof value.$typeName === "string";
}

function event(response) {
  const { case: kind, value } = response.event;
  return kind === "chunk" ? { chunk: value } : { completion: value };
}

/** A gRPC status name for a ConnectError's code ("INVALID_ARGUMENT"). */
export function statusName(code) {
  const name = Code[code] ?? "Unknown";
  return name.replace(/([a-z])([A-Z])/g, "$1_$2").toUpperCase();
}
