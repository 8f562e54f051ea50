// TESTS ONLY. A gRPC-Web CallInvoker over mono's HttpClient, so that the
// package's client layer and generated code can talk to a real server here
// (no Grpc.Net.Client on this machine). Unary and server-streaming calls; the
// response is read frame by frame as it arrives (HttpCompletionOption.
// ResponseHeadersRead), which is what makes chunk timing observable.
using System;
using System.Buffers;
using System.IO;
using System.Net.Http;
using System.Net.Http.Headers;
using System.Threading;
using System.Threading.Tasks;
using Grpc.Core;

namespace ArBridge.Tests
{
    public sealed class GrpcWebCallInvoker : CallInvoker
    {
        readonly HttpClient http = new HttpClient { Timeout = System.Threading.Timeout.InfiniteTimeSpan };
        readonly string baseUrl;

        public GrpcWebCallInvoker(string baseUrl) { this.baseUrl = baseUrl.TrimEnd('/'); }

        public override AsyncServerStreamingCall<TResponse> AsyncServerStreamingCall<TRequest, TResponse>(
            Method<TRequest, TResponse> method, string host, CallOptions options, TRequest request)
        {
            var call = new WebCall<TRequest, TResponse>(http, baseUrl, method, options);
            return new AsyncServerStreamingCall<TResponse>(call, call.Begin(request), call.GetStatus,
                                                           call.GetTrailers, call.Dispose);
        }

        public override AsyncUnaryCall<TResponse> AsyncUnaryCall<TRequest, TResponse>(
            Method<TRequest, TResponse> method, string host, CallOptions options, TRequest request)
        {
            var call = new WebCall<TRequest, TResponse>(http, baseUrl, method, options);
            var headers = call.Begin(request);
            return new AsyncUnaryCall<TResponse>(call.ReadSingleAsync(), headers, call.GetStatus,
                                                 call.GetTrailers, call.Dispose);
        }

        public override TResponse BlockingUnaryCall<TRequest, TResponse>(
            Method<TRequest, TResponse> method, string host, CallOptions options, TRequest request)
        {
            return AsyncUnaryCall(method, host, options, request).ResponseAsync.GetAwaiter().GetResult();
        }

        public override AsyncClientStreamingCall<TRequest, TResponse> AsyncClientStreamingCall<TRequest, TResponse>(
            Method<TRequest, TResponse> method, string host, CallOptions options)
        {
            throw new RpcException(new Status(StatusCode.Unimplemented, "gRPC-Web has no client streaming"));
        }

        public override AsyncDuplexStreamingCall<TRequest, TResponse> AsyncDuplexStreamingCall<TRequest, TResponse>(
            Method<TRequest, TResponse> method, string host, CallOptions options)
        {
            throw new RpcException(new Status(StatusCode.Unimplemented, "gRPC-Web has no bidirectional streaming"));
        }
    }

    sealed class WebCall<TRequest, TResponse> : IAsyncStreamReader<TResponse>
    {
        readonly HttpClient http;
        readonly string url;
        readonly Method<TRequest, TResponse> method;
        readonly CallOptions options;
        readonly CancellationTokenSource cts;
        Stream body;
        Status status;
        Metadata trailers = new Metadata();
        bool finished;
        Task<Metadata> started;

        public WebCall(HttpClient http, string baseUrl, Method<TRequest, TResponse> method, CallOptions options)
        {
            this.http = http;
            url = baseUrl + method.FullName;
            this.method = method;
            this.options = options;
            cts = CancellationTokenSource.CreateLinkedTokenSource(options.CancellationToken);
        }

        public TResponse Current { get; private set; }

        public Task<Metadata> Begin(TRequest request)
        {
            started = Start(request);
            return started;
        }

        async Task<Metadata> Start(TRequest request)
        {
            var payload = Serialize(request);
            var framed = new byte[5 + payload.Length];
            WriteLength(framed, payload.Length);
            Buffer.BlockCopy(payload, 0, framed, 5, payload.Length);
            var message = new HttpRequestMessage(HttpMethod.Post, url) { Content = new ByteArrayContent(framed) };
            message.Content.Headers.ContentType = new MediaTypeHeaderValue("application/grpc-web+proto");
            message.Headers.Add("x-grpc-web", "1");
            if (options.Deadline.HasValue)
            {
                long ms = Math.Max(1, (long)(options.Deadline.Value - DateTime.UtcNow).TotalMilliseconds);
                message.Headers.Add("grpc-timeout", ms + "m");
            }
            if (options.Headers != null)
                foreach (var entry in options.Headers)
                    message.Headers.TryAddWithoutValidation(entry.Key,
                        entry.IsBinary ? Convert.ToBase64String(entry.ValueBytes) : entry.Value);
            HttpResponseMessage response;
            try
            {
                response = await http.SendAsync(message, HttpCompletionOption.ResponseHeadersRead, cts.Token);
            }
            catch (Exception e) when (!(e is RpcException))
            {
                throw Failure(e);
            }
            if ((int)response.StatusCode != 200)
                throw new RpcException(new Status(StatusCode.Unavailable, "HTTP " + (int)response.StatusCode));
            body = await response.Content.ReadAsStreamAsync();
            var headers = new Metadata();
            foreach (var h in response.Headers)
                foreach (var v in h.Value) headers.Add(h.Key, v);
            return headers;
        }

        public async Task<bool> MoveNext(CancellationToken cancellationToken)
        {
            if (finished) return false;
            await started;  // the response headers first; rethrows a failed start
            var frameHeader = new byte[5];
            using (var linked = CancellationTokenSource.CreateLinkedTokenSource(cts.Token, cancellationToken))
            {
                try
                {
                    if (!await ReadExactly(frameHeader, linked.Token))
                        throw new RpcException(new Status(StatusCode.Internal, "stream ended without trailers"));
                    int length = (frameHeader[1] << 24) | (frameHeader[2] << 16) | (frameHeader[3] << 8) | frameHeader[4];
                    var payload = new byte[length];
                    if (!await ReadExactly(payload, linked.Token))
                        throw new RpcException(new Status(StatusCode.Internal, "frame cut short"));
                    if ((frameHeader[0] & 0x80) != 0)
                    {
                        ParseTrailers(payload);
                        finished = true;
                        if (status.StatusCode != StatusCode.OK) throw new RpcException(status, trailers);
                        return false;
                    }
                    Current = method.ResponseMarshaller.ContextualDeserializer(new BytesDeserializationContext(payload));
                    return true;
                }
                catch (Exception e) when (!(e is RpcException))
                {
                    throw Failure(e);
                }
            }
        }

        public async Task<TResponse> ReadSingleAsync()
        {
            if (!await MoveNext(CancellationToken.None))
                throw new RpcException(new Status(StatusCode.Internal, "no response message"));
            var reply = Current;
            await MoveNext(CancellationToken.None);  // the trailers
            return reply;
        }

        public Status GetStatus() { return status; }
        public Metadata GetTrailers() { return trailers; }

        public void Dispose()
        {
            if (!cts.IsCancellationRequested) cts.Cancel();
            if (body != null) body.Dispose();
        }

        RpcException Failure(Exception e)
        {
            if (cts.IsCancellationRequested)
                return new RpcException(new Status(StatusCode.Cancelled, "call cancelled"));
            return new RpcException(new Status(StatusCode.Unavailable, e.GetType().Name + ": " + e.Message));
        }

        async Task<bool> ReadExactly(byte[] buffer, CancellationToken token)
        {
            int done = 0;
            while (done < buffer.Length)
            {
                var read = body.ReadAsync(buffer, done, buffer.Length - done, token);
                // Mono's network stream does not always honour the token: race it.
                var cancelled = Task.Delay(System.Threading.Timeout.Infinite, token);
                if (await Task.WhenAny(read, cancelled) == cancelled) throw new OperationCanceledException(token);
                int n = await read;
                if (n == 0) return false;
                done += n;
            }
            return true;
        }

        void ParseTrailers(byte[] block)
        {
            var code = StatusCode.Unknown;
            string detail = "";
            foreach (var line in System.Text.Encoding.ASCII.GetString(block).Split(new[] { "\r\n" }, StringSplitOptions.RemoveEmptyEntries))
            {
                int colon = line.IndexOf(':');
                if (colon < 0) continue;
                string key = line.Substring(0, colon).Trim().ToLowerInvariant();
                string value = line.Substring(colon + 1).Trim();
                if (key == "grpc-status") code = (StatusCode)int.Parse(value);
                else if (key == "grpc-message") detail = Uri.UnescapeDataString(value);
                else trailers.Add(key, value);
            }
            status = new Status(code, detail);
        }

        byte[] Serialize(TRequest request)
        {
            var context = new BytesSerializationContext();
            method.RequestMarshaller.ContextualSerializer(request, context);
            return context.Payload;
        }

        static void WriteLength(byte[] frame, int length)
        {
            frame[0] = 0;
            frame[1] = (byte)(length >> 24); frame[2] = (byte)(length >> 16);
            frame[3] = (byte)(length >> 8); frame[4] = (byte)length;
        }
    }

    sealed class BytesSerializationContext : SerializationContext, IBufferWriter<byte>
    {
        byte[] buffer = new byte[256];
        int written;
        public byte[] Payload { get; private set; }

        public override void Complete(byte[] payload) { Payload = payload; }
        public override IBufferWriter<byte> GetBufferWriter() { return this; }
        public override void SetPayloadLength(int payloadLength) { Ensure(payloadLength); }
        public override void Complete()
        {
            Payload = new byte[written];
            Buffer.BlockCopy(buffer, 0, Payload, 0, written);
        }

        public void Advance(int count) { written += count; }
        public Memory<byte> GetMemory(int sizeHint = 0) { Ensure(Math.Max(sizeHint, 1)); return new Memory<byte>(buffer, written, buffer.Length - written); }
        public Span<byte> GetSpan(int sizeHint = 0) { Ensure(Math.Max(sizeHint, 1)); return new Span<byte>(buffer, written, buffer.Length - written); }

        void Ensure(int more)
        {
            if (buffer.Length - written >= more) return;
            Array.Resize(ref buffer, Math.Max(buffer.Length * 2, written + more));
        }
    }

    sealed class BytesDeserializationContext : DeserializationContext
    {
        readonly byte[] payload;
        public BytesDeserializationContext(byte[] payload) { this.payload = payload; }
        public override int PayloadLength { get { return payload.Length; } }
        public override byte[] PayloadAsNewBuffer() { return (byte[])payload.Clone(); }
        public override ReadOnlySequence<byte> PayloadAsReadOnlySequence() { return new ReadOnlySequence<byte>(payload); }
    }
}
