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
        /// <summary>Native gRPC over HTTP/2 (YetAnotherHttpHandler): desktop, Android, iOS, visionOS.</summary>
        Http2,
        /// <summary>gRPC-Web over HTTP/1.1 to the server's --grpc-web-port: WebGL, or networks that block HTTP/2.</summary>
        GrpcWeb,
    }

    public static class ArBridgeChannels
    {
        /// <summary>gRPC-Web on WebGL (browsers cannot speak gRPC's HTTP/2), HTTP/2 elsewhere.</summary>
        public static ArBridgeTransport DefaultForThisPlatform
        {
            get
            {
#if UNITY_WEBGL && !UNITY_EDITOR
                return ArBridgeTransport.GrpcWeb;
#else
                return ArBridgeTransport.Http2;
#endif
            }
        }

        /// <summary>
        /// A channel to <paramref name="address"/> ("http://host:50051" for plaintext h2c,
        /// "https://..." for TLS; for gRPC-Web the --grpc-web-port). <paramref name="rootCertificatesPem"/>
        /// trusts a private CA on the HTTP/2 path. <paramref name="grpcWebInner"/> replaces the
        /// HTTP handler under gRPC-Web (on WebGL, one that runs on the browser's fetch).
        /// </summary>
        public static GrpcChannel Create(string address, ArBridgeTransport transport,
                                         string rootCertificatesPem = null, HttpMessageHandler grpcWebInner = null)
        {
            if (string.IsNullOrEmpty(address)) throw new ArgumentException("address is empty");
            HttpMessageHandler handler;
            if (transport == ArBridgeTransport.Http2)
            {
#if ARBRIDGE_YAHH
                var http2 = new Cysharp.Net.Http.YetAnotherHttpHandler();
                // Plaintext needs HTTP/2 "prior knowledge" (h2c): there is no TLS ALPN to negotiate it.
                http2.Http2Only = address.StartsWith("http://", StringComparison.OrdinalIgnoreCase);
                if (!string.IsNullOrEmpty(rootCertificatesPem)) http2.RootCertificates = rootCertificatesPem;
                handler = http2;
#else
                throw new InvalidOperationException(
                    "ArBridgeTransport.Http2 needs the YetAnotherHttpHandler package (see the package README)");
#endif
            }
            else
            {
                var inner = grpcWebInner ?? DefaultGrpcWebInner();
                handler = new GrpcWebHandler(GrpcWebMode.GrpcWeb, inner);
            }
            return GrpcChannel.ForAddress(address, new GrpcChannelOptions
            {
                HttpHandler = handler,
                DisposeHttpClient = true,
                MaxReceiveMessageSize = 4 * 1024 * 1024,
            });
        }

        static HttpMessageHandler DefaultGrpcWebInner()
        {
#if UNITY_6000_5_OR_NEWER
            // UnityWebRequest underneath: works in WebGL builds.
            return new UnityEngine.Networking.UnityHttpMessageHandler();
#else
            return new HttpClientHandler();
#endif
        }
    }
}
