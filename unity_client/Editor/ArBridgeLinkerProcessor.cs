// IL2CPP strips code it cannot see used; protobuf and gRPC reach much of theirs
// by reflection. A link.xml inside a UPM package is ignored, so this hands the
// linker one at build time.
using System.IO;
using UnityEditor.Build;
using UnityEditor.Build.Reporting;
using UnityEditor.UnityLinker;
using UnityEngine;

namespace ArBridge.Editor
{
    sealed class ArBridgeLinkerProcessor : IUnityLinkerProcessor
    {
        static readonly string[] Preserved =
        {
            "ArBridge.Client", "ArBridge.Client.Unity", "Google.Protobuf", "Grpc.Core.Api",
            "Grpc.Net.Client", "Grpc.Net.Client.Web", "Grpc.Net.Common",
        };

        public int callbackOrder { get { return 0; } }

        public string GenerateAdditionalLinkXmlFile(BuildReport report, UnityLinkerBuildPipelineData data)
        {
            var path = Path.GetFullPath(Path.Combine(Application.dataPath, "..", "Temp", "ArBridge.link.xml"));
            using (var writer = new StreamWriter(path))
            {
                writer.WriteLine("<linker>");
                foreach (var assembly in Preserved)
                    // ignoreIfMissing: an assembly a project does not have (Grpc.Net.Client.Web
                    // without gRPC-Web, say) must not fail the build.
                    writer.WriteLine("  <assembly fullname=\"" + assembly + "\" preserve=\"all\" ignoreIfMissing=\"1\"/>");
                // The WebGL thread-pool pump reaches this by reflection (WebGLThreadPoolPump.cs).
                writer.WriteLine("  <assembly fullname=\"mscorlib\">");
                writer.WriteLine("    <type fullname=\"System.Threading._ThreadPoolWaitCallback\" preserve=\"all\"/>");
                writer.WriteLine("  </assembly>");
                writer.WriteLine("</linker>");
            }
            return path;
        }
    }
}
