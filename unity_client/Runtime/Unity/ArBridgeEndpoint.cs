using System;
using System.Net.Http;
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

        /// <summary>
        /// Set from code before first use on WebGL with Unity older than 6.5: an
        /// HttpMessageHandler that runs on the browser's fetch, under gRPC-Web.
        /// </summary>
        [NonSerialized] public HttpMessageHandler grpcWebInnerHandler;

        /// <summary>Trusted CA (PEM) for a server certificate from a private CA (HTTP/2 path).</summary>
        [NonSerialized] public string rootCertificatesPem;

        GrpcChannel channel;
        string channelKey;
        ArBridgeClient client;
        string clientKey;

        /// <summary>The transport the client uses (automatic: gRPC-Web on WebGL, HTTP/2 elsewhere).</summary>
        public ArBridgeTransport ChosenTransport
        {
            get { return automaticTransport ? ArBridgeChannels.DefaultForThisPlatform : transport; }
        }

        /// <summary>
        /// The shared client. The channel is made on first use and again when the
        /// address or transport changes; a new token or timeout (e.g. a refreshed
        /// per-user token) applies to the calls started after it is set.
        /// </summary>
        public ArBridgeClient Client
        {
            get
            {
                var chosen = ChosenTransport;
                string wantChannel = address + "|" + chosen;
                if (channel == null || channelKey != wantChannel)
                {
                    if (channel != null) channel.Dispose();
                    channel = ArBridgeChannels.Create(address, chosen, rootCertificatesPem, grpcWebInnerHandler);
                    channelKey = wantChannel;
                    client = null;
                }
                string wantClient = bearerToken + "|" + callTimeoutSeconds;
                if (client == null || clientKey != wantClient)
                {
                    client = new ArBridgeClient(channel.CreateCallInvoker(), new ArBridgeClientOptions
                    {
                        BearerToken = string.IsNullOrEmpty(bearerToken) ? null : bearerToken,
                        CallTimeout = callTimeoutSeconds > 0 ? TimeSpan.FromSeconds(callTimeoutSeconds) : (TimeSpan?)null,
                    });
                    clientKey = wantClient;
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
