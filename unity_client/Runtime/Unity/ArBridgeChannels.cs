// Which HTTP stack carries gRPC on which platform. Compiled by Unity only
// (needs Grpc.Net.Client); the plain client layer takes any CallInvoker.
using System;
using System.Net.Http;
using Grpc.Net.Client;
using Grpc.Net.Client.Web;

namespace ArBridge.Unity
{
    public enum ArBridgeTransport
    {
        /// <summary>Native gRPC over HTTP/2 (YetAnotherHttpHandler): Windows, macOS, Linux, Android, iOS.</summary>
        Http2,
        /// <summary>gRPC-Web over HTTP/1.1 to the server's --grpc-web-port: WebGL, or networks that block HTTP/2.</summary>
        GrpcWeb,
    }

    public static class ArBridgeChannels
    {
        /// <summary>True in a WebGL player: no sockets, no threads, the browser's fetch only.</summary>
        public static bool RunsInBrowser
        {
            get
            {
#if UNITY_WEBGL && !UNITY_EDITOR
                return true;
#else
                return false;
#endif
            }
        }

        /// <summary>
        /// gRPC-Web for WebGL (browsers cannot speak gRPC's HTTP/2), HTTP/2 elsewhere. The Editor
        /// with WebGL as its build target uses gRPC-Web too, so Play mode talks to the same port.
        /// </summary>
        public static ArBridgeTransport DefaultForThisPlatform
        {
            get
            {
#if UNITY_WEBGL
                return ArBridgeTransport.GrpcWeb;
#else
                return ArBridgeTransport.Http2;
#endif
            }
        }

        /// <summary>
        /// grpc-dotnet: "Base64 encoding is required for gRPC-Web server streaming calls to stream
        /// correctly in browser apps", so a browser gets grpc-web-text; elsewhere binary frames
        /// are a third smaller. The server speaks both.
        /// </summary>
        public static GrpcWebMode GrpcWebModeForThisPlatform
        {
            get { return RunsInBrowser ? GrpcWebMode.GrpcWebText : GrpcWebMode.GrpcWeb; }
        }

        /// <summary>
        /// A channel to <paramref name="address"/> ("http://host:50051" for plaintext h2c,
        /// "https://..." for TLS; for gRPC-Web the --grpc-web-port). <paramref name="rootCertificatesPem"/>
        /// trusts a private CA on the HTTP/2 path. <paramref name="grpcWebInner"/> replaces the
        /// HTTP handler under gRPC-Web; it stays the caller's: disposing the channel leaves it
        /// usable for the next channel.
        /// </summary>
        public static GrpcChannel Create(string address, ArBridgeTransport transport,
                                         string rootCertificatesPem = null, HttpMessageHandler grpcWebInner = null)
        {
            if (string.IsNullOrEmpty(address)) throw new ArgumentException("address is empty");
            return GrpcChannel.ForAddress(address, new GrpcChannelOptions
            {
                HttpHandler = CreateHandler(address, transport, rootCertificatesPem, grpcWebInner),
                // The channel owns the handler made here (and disposes it); a caller's inner
                // handler sits behind KeepOpen, so it survives.
                DisposeHttpClient = true,
                MaxReceiveMessageSize = 4 * 1024 * 1024,
            });
        }

        /// <summary>The HTTP handler <see cref="Create"/> gives the channel.</summary>
        public static HttpMessageHandler CreateHandler(string address, ArBridgeTransport transport,
                                                       string rootCertificatesPem = null,
                                                       HttpMessageHandler grpcWebInner = null)
        {
            if (transport == ArBridgeTransport.Http2)
            {
                if (RunsInBrowser)
                    throw new PlatformNotSupportedException(
                        "ArBridgeTransport.Http2 cannot run in a browser: use ArBridgeTransport.GrpcWeb on WebGL");
#if ARBRIDGE_YAHH
                var http2 = new Cysharp.Net.Http.YetAnotherHttpHandler();
                // Plaintext needs HTTP/2 "prior knowledge" (h2c): there is no TLS ALPN to negotiate it.
                http2.Http2Only = address.StartsWith("http://", StringComparison.OrdinalIgnoreCase);
                if (!string.IsNullOrEmpty(rootCertificatesPem)) http2.RootCertificates = rootCertificatesPem;
                return http2;
#else
                throw new InvalidOperationException(
                    "ArBridgeTransport.Http2 needs the YetAnotherHttpHandler package (see the package README)");
#endif
            }
            var inner = grpcWebInner != null ? new KeepOpen(grpcWebInner) : DefaultGrpcWebInner();
            return new GrpcWebHandler(GrpcWebModeForThisPlatform, inner);
        }

        static HttpMessageHandler DefaultGrpcWebInner()
        {
#if UNITY_6000_5_OR_NEWER
            // UnityWebRequest underneath: the one handler that works in WebGL builds and everywhere else.
            return new UnityEngine.Networking.UnityHttpMessageHandler();
#else
            if (RunsInBrowser)
                throw new PlatformNotSupportedException(
                    "gRPC-Web on WebGL before Unity 6.5 needs a fetch-based HttpMessageHandler: set " +
                    "ArBridgeEndpoint.grpcWebInnerHandler (HttpClientHandler cannot open sockets in a browser)");
            return new HttpClientHandler();
#endif
        }

        /// <summary>Passes requests through; disposing it leaves the inner handler alone.</summary>
        sealed class KeepOpen : DelegatingHandler
        {
            public KeepOpen(HttpMessageHandler inner) : base(inner) { }

            protected override void Dispose(bool disposing)
            {
                // DelegatingHandler.Dispose would dispose the inner handler, which is the app's.
            }
        }
    }
}
