// assembly: Grpc.Net.Client.Web
// TESTS ONLY. grpc-dotnet v2.59.0 src/Grpc.Net.Client.Web: GrpcWebMode (GrpcWeb = 0,
// GrpcWebText = 1) and GrpcWebHandler's constructors and properties.
using System;
using System.Net.Http;
using System.Threading;
using System.Threading.Tasks;

namespace Grpc.Net.Client.Web
{
    public enum GrpcWebMode
    {
        GrpcWeb,
        GrpcWebText,
    }

    public sealed class GrpcWebHandler : DelegatingHandler
    {
        public Version HttpVersion { get; set; }
        public GrpcWebMode GrpcWebMode { get; set; }
        public GrpcWebHandler() { }
        public GrpcWebHandler(HttpMessageHandler innerHandler) : base(innerHandler) { }
        public GrpcWebHandler(GrpcWebMode mode) { GrpcWebMode = mode; }
        public GrpcWebHandler(GrpcWebMode mode, HttpMessageHandler innerHandler) : base(innerHandler) { GrpcWebMode = mode; }
        protected override Task<HttpResponseMessage> SendAsync(HttpRequestMessage request, CancellationToken cancellationToken)
        { return base.SendAsync(request, cancellationToken); }
    }
}
