// Stream a scene caption from ArBridge over native gRPC (C++), the way an
// Unreal plugin would: a blocking ClientReader read loop, best run on a worker
// thread (FRunnable / AsyncTask) with each chunk marshalled to the game thread.
//
//   describe_scene [host:port] [request.json]
//
// request.json is a DescribeSceneRequest in protobuf JSON (examples/scene.json).
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

#include <google/protobuf/util/json_util.h>
#include <grpcpp/grpcpp.h>

#include "arbridge/v1/service.grpc.pb.h"

namespace v1 = arbridge::v1;

int main(int argc, char** argv) {
  const std::string target = argc > 1 ? argv[1] : "127.0.0.1:50051";
  const std::string path = argc > 2 ? argv[2] : "examples/scene.json";

  std::ifstream file(path);
  if (!file) {
    std::cerr << "cannot read " << path << "\n";
    return 2;
  }
  std::stringstream json;
  json << file.rdbuf();
  v1::DescribeSceneRequest request;
  auto parsed = google::protobuf::util::JsonStringToMessage(json.str(), &request);
  if (!parsed.ok()) {
    std::cerr << path << ": " << parsed.ToString() << "\n";
    return 2;
  }

  auto channel = grpc::CreateChannel(target, grpc::InsecureChannelCredentials());
  auto stub = v1::ArBridgeService::NewStub(channel);
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
  if (const char* token = std::getenv("ARBRIDGE_TOKEN")) {
    context.AddMetadata("authorization", std::string("Bearer ") + token);
  }

  const auto start = std::chrono::steady_clock::now();
  std::unique_ptr<grpc::ClientReader<v1::DescribeSceneResponse>> reader(
      stub->DescribeScene(&context, request));
  v1::DescribeSceneResponse response;
  google::protobuf::util::JsonPrintOptions options;
  while (reader->Read(&response)) {
    const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(
        std::chrono::steady_clock::now() - start).count();
    std::string line;
    (void)google::protobuf::util::MessageToJsonString(response, &line, options);
    std::cout << ms << " " << line << std::endl;  // flushed: a caption shows as it grows
  }
  grpc::Status status = reader->Finish();
  if (!status.ok()) {
    std::cerr << "ERROR " << status.error_code() << " " << status.error_message() << "\n";
    return 1;
  }
  return 0;
}
