// assembly: Grpc.Net.Client references: Grpc.Core.Api, Grpc.Net.Common
// TESTS ONLY. grpc-dotnet v2.59.0 src/Grpc.Net.Client (netstandard2.1): GrpcChannel and
// GrpcChannelOptions as declared, and the one behaviour the package meets: Dispose with
// DisposeHttpClient = true disposes the HttpHandler it was given (through an
// HttpMessageInvoker(handler, disposeHandler: true)), and a disposed channel refuses
// CreateCallInvoker with ObjectDisposedException.
using System;
using System.Collections.Generic;
using System.Net.Http;

namespace Grpc.Net.Client
{
    public sealed class GrpcChannelOptions
    {
        public GrpcChannelOptions() { MaxReceiveMessageSize = 4194304; MaxRetryAttempts = 5; MaxRetryBufferSize = 16777216; MaxRetryBufferPerCallSize = 1048576; }
        public Grpc.Core.ChannelCredentials Credentials { get; set; }
        public int? MaxSendMessageSize { get; set; }
        public int? MaxReceiveMessageSize { get; set; }
        public int? MaxRetryAttempts { get; set; }
        public long? MaxRetryBufferSize { get; set; }
        public long? MaxRetryBufferPerCallSize { get; set; }
        public IList<Grpc.Net.Compression.ICompressionProvider> CompressionProviders { get; set; }
        public HttpClient HttpClient { get; set; }
        public HttpMessageHandler HttpHandler { get; set; }
        public bool DisposeHttpClient { get; set; }
        public bool ThrowOperationCanceledOnCancellation { get; set; }
        public bool UnsafeUseInsecureChannelCallCredentials { get; set; }
        public IServiceProvider ServiceProvider { get; set; }
    }

    public sealed class GrpcChannel : Grpc.Core.ChannelBase, IDisposable
    {
        readonly HttpMessageInvoker invoker;
        readonly bool shouldDispose;
        bool disposed;

        GrpcChannel(Uri address, GrpcChannelOptions options) : base(address.Authority)
        {
            if (options.HttpClient != null && options.HttpHandler != null)
                throw new ArgumentException("HttpClient and HttpHandler have been configured. Only one HTTP caller can be specified.");
            shouldDispose = (options.HttpClient == null && options.HttpHandler == null) || options.DisposeHttpClient;
            invoker = options.HttpClient ?? new HttpMessageInvoker(options.HttpHandler ?? new HttpClientHandler(), true);
        }

        public static GrpcChannel ForAddress(string address) { return ForAddress(address, new GrpcChannelOptions()); }
        public static GrpcChannel ForAddress(string address, GrpcChannelOptions channelOptions) { return ForAddress(new Uri(address), channelOptions); }
        public static GrpcChannel ForAddress(Uri address) { return ForAddress(address, new GrpcChannelOptions()); }
        public static GrpcChannel ForAddress(Uri address, GrpcChannelOptions channelOptions)
        {
            if (address == null) throw new ArgumentNullException("address");
            if (channelOptions == null) throw new ArgumentNullException("channelOptions");
            return new GrpcChannel(address, channelOptions);
        }

        public override Grpc.Core.CallInvoker CreateCallInvoker()
        {
            if (disposed) throw new ObjectDisposedException("GrpcChannel");
            throw new NotSupportedException("stand-in: no transport");
        }

        public void Dispose()
        {
            if (disposed) return;
            disposed = true;
            if (shouldDispose) invoker.Dispose();
        }
    }
}
