// Stream a scene caption from ArBridge over native gRPC (C++), the way an
// Unreal plugin would: a blocking ClientReader read loop, best run on a worker
// thread (FRunnable / AsyncTask) with each chunk marshalled to the game thread.
//
//   describe_scene [host:port] [request.json] [describe|ask]
//
// request.json is a DescribeSceneRequest in protobuf JSON (examples/scene.json),
// or with `ask` an AskRequest (a dialogue turn; examples/act.json points at an
// object and declares scene actions: each call arrives as an "action" event).
// Prints one line per event as it arrives: "<ms since start> <event as JSON>".
// On an error: "ERROR <code> <message>" on stderr and exit status 1.
// ARBRIDGE_TOKEN, when set, is sent as a bearer token.

#include <chrono>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <memory>
#include <sstream>
#include <string>
#include <thread>

#include <google/protobuf/util/json_util.h>
#include <grpcpp/grpcpp.h>

#include "arbridge/v1/service.grpc.pb.h"

namespace v1 = arbridge::v1;

// Streams `request` (DescribeScene or Ask), resuming after a dropped connection.
template <typename Request, typename Response, typename Call>
int Stream(v1::ArBridgeService::Stub* stub, Request request, Call call);

// The request in `json` (protobuf JSON) streamed by `call`; 2 when it does not parse.
template <typename Request, typename Response, typename Call>
int Run(v1::ArBridgeService::Stub* stub, const std::string& json, const std::string& path,
        Call call) {
  Request request;
  auto parsed = google::protobuf::util::JsonStringToMessage(json, &request);
  if (!parsed.ok()) {
    std::cerr << path << ": " << parsed.ToString() << "\n";
    return 2;
  }
  return Stream<Request, Response>(stub, request, call);
}

int main(int argc, char** argv) {
  const std::string target = argc > 1 ? argv[1] : "127.0.0.1:50051";
  const std::string path = argc > 2 ? argv[2] : "examples/scene.json";
  const bool ask = argc > 3 && std::string(argv[3]) == "ask";

  std::ifstream file(path);
  if (!file) {
    std::cerr << "cannot read " << path << "\n";
    return 2;
  }
  std::stringstream json;
  json << file.rdbuf();
  auto channel = grpc::CreateChannel(target, grpc::InsecureChannelCredentials());
  auto stub = v1::ArBridgeService::NewStub(channel);
  if (ask) {
    return Run<v1::AskRequest, v1::AskResponse>(
        stub.get(), json.str(), path, [&](grpc::ClientContext* c, const v1::AskRequest& r) {
          return stub->Ask(c, r);
        });
  }
  return Run<v1::DescribeSceneRequest, v1::DescribeSceneResponse>(
      stub.get(), json.str(), path,
      [&](grpc::ClientContext* c, const v1::DescribeSceneRequest& r) {
        return stub->DescribeScene(c, r);
      });
}

template <typename Request, typename Response, typename Call>
int Stream(v1::ArBridgeService::Stub* stub, Request request, Call call) {

  // A resumable reply: if the connection drops mid-caption (the headset changed
  // networks), Resume continues after the last seq received, nothing shown twice.
  request.mutable_stream()->set_resumable(true);
  const char* token = std::getenv("ARBRIDGE_TOKEN");
  const auto start = std::chrono::steady_clock::now();
  google::protobuf::util::JsonPrintOptions options;
  std::string stream_id;
  uint64_t last_seq = 0;
  bool finished = false;

  // Prints an event once (by seq); the same for the first call and each Resume.
  auto show = [&](const auto& response) {
    if (!response.stream_id().empty()) stream_id = response.stream_id();
    if (response.seq() <= last_seq) return;
    last_seq = response.seq();
    finished = finished || response.has_completion();
    const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(
        std::chrono::steady_clock::now() - start).count();
    std::string line;
    (void)google::protobuf::util::MessageToJsonString(response, &line, options);
    std::cout << ms << " " << line << std::endl;  // flushed: a caption shows as it grows
  };

  grpc::Status status;
  for (int attempt = 0; attempt <= 5; ++attempt) {
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
    if (token) context.AddMetadata("authorization", std::string("Bearer ") + token);
    if (attempt == 0) {
      auto reader = call(&context, request);
      Response response;
      while (reader->Read(&response)) show(response);
      status = reader->Finish();
    } else {
      v1::ResumeRequest resume;
      resume.set_stream_id(stream_id);
      resume.set_after_seq(last_seq);
      auto reader = stub->Resume(&context, resume);
      v1::ResumeResponse response;
      while (reader->Read(&response)) show(response);
      status = reader->Finish();
    }
    const bool transient = status.error_code() == grpc::StatusCode::UNAVAILABLE ||
                           status.error_code() == grpc::StatusCode::INTERNAL;
    if (status.ok() || finished || stream_id.empty() || !transient) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(250 << attempt));  // backoff
  }
  if (!status.ok() && !finished) {
    std::cerr << "ERROR " << status.error_code() << " " << status.error_message() << "\n";
    return 1;
  }
  return 0;
}
