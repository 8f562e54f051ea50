using System;
using System.Net.Http;
using System.Runtime.CompilerServices;
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

        [Tooltip("Deadline of one caption, in seconds (0 = none; none on WebGL, see EffectiveCallTimeout).")]
        public float callTimeoutSeconds = 60f;

        [Tooltip("Captions survive a dropped connection: the client resumes the reply where it broke " +
                 "(the server keeps it for its resume_grace_s).")]
        public bool resumeDroppedReplies = true;

        /// <summary>
        /// Set from code before first use on WebGL with Unity older than 6.5: an
        /// HttpMessageHandler that runs on the browser's fetch, under gRPC-Web.
        /// </summary>
        [NonSerialized] public HttpMessageHandler grpcWebInnerHandler;

        /// <summary>Trusted CA (PEM) for a server certificate from a private CA (HTTP/2 path).</summary>
        [NonSerialized] public string rootCertificatesPem;

        /// <summary>
        /// A transport of your own instead of a channel made here (e.g. Cysharp's
        /// GrpcWebSocketBridge on WebGL before Unity 6.5, or a test double). Set it from code
        /// before the first call; the token and timeout settings still apply.
        /// </summary>
        [NonSerialized] public Grpc.Core.CallInvoker callInvoker;

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
                if (destroyed) throw new ObjectDisposedException("ArBridgeEndpoint");
                var chosen = ChosenTransport;
                // Any setting the channel is made from: changing one makes a new channel.
                string wantChannel = callInvoker != null
                    ? "invoker:" + RuntimeHelpers.GetHashCode(callInvoker)
                    : address + "|" + chosen + "|" + rootCertificatesPem + "|"
                      + (grpcWebInnerHandler == null ? 0 : RuntimeHelpers.GetHashCode(grpcWebInnerHandler));
                if (channelKey != wantChannel)
                {
                    if (channel != null) channel.Dispose();
                    channel = callInvoker == null
                        ? ArBridgeChannels.Create(address, chosen, rootCertificatesPem, grpcWebInnerHandler)
                        : null;
                    channelKey = wantChannel;
                    client = null;
                }
                string wantClient = wantChannel + "|" + bearerToken + "|" + callTimeoutSeconds + "|" +
                                    resumeDroppedReplies;
                if (client == null || clientKey != wantClient)
                {
                    client = new ArBridgeClient(callInvoker ?? channel.CreateCallInvoker(), new ArBridgeClientOptions
                    {
                        BearerToken = string.IsNullOrEmpty(bearerToken) ? null : bearerToken,
                        CallTimeout = EffectiveCallTimeout,
                        Resume = resumeDroppedReplies ? new ReconnectPolicy() : null,
                    });
                    clientKey = wantClient;
                }
                return client;
            }
        }

        /// <summary>
        /// The deadline each call gets. None in a WebGL player: Grpc.Net.Client runs deadlines on
        /// System.Threading timers, which a browser build without threads does not fire; cancel
        /// from code there (CaptionStreamer.Cancel, DialogueAgent.Interrupt) instead.
        /// </summary>
        public TimeSpan? EffectiveCallTimeout
        {
            get
            {
                if (ArBridgeChannels.RunsInBrowser || callTimeoutSeconds <= 0) return null;
                return TimeSpan.FromSeconds(callTimeoutSeconds);
            }
        }

        bool destroyed;

        void OnDestroy()
        {
            destroyed = true;
            if (channel != null) channel.Dispose();
            channel = null;
            client = null;
        }
    }
}
