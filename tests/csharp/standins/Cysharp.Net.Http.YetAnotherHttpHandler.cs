// assembly: Cysharp.Net.Http.YetAnotherHttpHandler
// TESTS ONLY. YetAnotherHttpHandler 1.11.5 (src/YetAnotherHttpHandler/YetAnotherHttpHandler.cs;
// its asmdef is named "Cysharp.Net.Http.YetAnotherHttpHandler"): the public settings, their
// real (nullable) types.
using System;
using System.Net.Http;
using System.Threading;
using System.Threading.Tasks;

namespace Cysharp.Net.Http
{
    public class YetAnotherHttpHandler : HttpMessageHandler
    {
        public TimeSpan? PoolIdleTimeout { get; set; }
        public ulong? MaxIdlePerHost { get; set; }
        public bool? Http2Only { get; set; }
        public bool? SkipCertificateVerification { get; set; }
        public string RootCertificates { get; set; }
        public string OverrideServerName { get; set; }
        public string ClientAuthCertificates { get; set; }
        public string ClientAuthKey { get; set; }
        public TimeSpan? ConnectTimeout { get; set; }
        public TimeSpan? Http2KeepAliveInterval { get; set; }
        public TimeSpan? Http2KeepAliveTimeout { get; set; }
        public bool? Http2KeepAliveWhileIdle { get; set; }
        protected override Task<HttpResponseMessage> SendAsync(HttpRequestMessage request, CancellationToken cancellationToken)
        { throw new NotSupportedException("stand-in"); }
    }
}
