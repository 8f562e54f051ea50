using System;
using ArBridge.Client;
using Grpc.Net.Client;
using UnityEngine;

namespace ArBridge.Unity
{
    /// <summary>
    /// Where the ArBridge server is and how to reach it. Put one in the scene and
    /// point CaptionStreamer / DialogueAgent at it; they share its channel.
    /// </summary>
    [AddComponentMenu("ArBridge/ArBridge Endpoint")]
    public sealed class ArBridgeEndpoint : MonoBehaviour
    {
        [Tooltip("http://host:50051 (plaintext) or https://host:50051 (TLS). For gRPC-Web, the --grpc-web-port.")]
        public string address = "http://127.0.0.1:50051";

        [Tooltip("Automatic: gRPC-Web on WebGL, HTTP/2 elsewhere.")]
        public bool automaticTransport = true;
        public ArBridgeTransport transport = ArBridgeTransport.Http2;

        [Tooltip("Bearer token when the server runs with token auth. Do not ship secrets in builds: " +
                 "fetch a per-user token at run time and set it from code.")]
        public string bearerToken = "";

        [Tooltip("Deadline of one caption, in seconds (0 = none).")]
        public float callTimeoutSeconds = 60f;

        GrpcChannel channel;
        ArBridgeClient client;

        /// <summary>The shared client, created on first use.</summary>
        public ArBridgeClient Client
        {
            get
            {
                if (client == null)
                {
                    var chosen = automaticTransport ? ArBridgeChannels.DefaultForThisPlatform : transport;
                    channel = ArBridgeChannels.Create(address, chosen);
                    client = new ArBridgeClient(channel.CreateCallInvoker(), new ArBridgeClientOptions
                    {
                        BearerToken = string.IsNullOrEmpty(bearerToken) ? null : bearerToken,
                        CallTimeout = callTimeoutSeconds > 0 ? TimeSpan.FromSeconds(callTimeoutSeconds) : (TimeSpan?)null,
                    });
                }
                return client;
            }
        }

        void OnDestroy()
        {
            if (channel != null) channel.Dispose();
            channel = null;
            client = null;
        }
    }
}
