// TESTS ONLY, never shipped. A stand-in for the part of Grpc.Core.Api that
// the generated ServiceGrpc.cs and the package's client layer use, with the
// same names and signatures, so that mono's mcs can compile and run them on a
// machine without NuGet. Unity projects get the real Grpc.Core.Api (with
// Grpc.Net.Client) from the package's declared dependencies.
using System;
using System.Buffers;
using System.Collections;
using System.Collections.Generic;
using System.Threading;
using System.Threading.Tasks;

namespace Grpc.Core
{
    public enum StatusCode
    {
        OK = 0, Cancelled = 1, Unknown = 2, InvalidArgument = 3, DeadlineExceeded = 4,
        NotFound = 5, AlreadyExists = 6, PermissionDenied = 7, ResourceExhausted = 8,
        FailedPrecondition = 9, Aborted = 10, OutOfRange = 11, Unimplemented = 12,
        Internal = 13, Unavailable = 14, DataLoss = 15, Unauthenticated = 16,
    }

    public struct Status
    {
        public static readonly Status DefaultSuccess = new Status(StatusCode.OK, "");
        public Status(StatusCode statusCode, string detail) { StatusCode = statusCode; Detail = detail; }
        public StatusCode StatusCode { get; }
        public string Detail { get; }
        public override string ToString() { return "Status(StatusCode=\"" + StatusCode + "\", Detail=\"" + Detail + "\")"; }
    }

    public class RpcException : Exception
    {
        public RpcException(Status status) : this(status, Metadata.Empty) { }
        public RpcException(Status status, Metadata trailers) : base(status.ToString())
        {
            Status = status;
            Trailers = trailers ?? Metadata.Empty;
        }
        public Status Status { get; }
        public StatusCode StatusCode { get { return Status.StatusCode; } }
        public Metadata Trailers { get; }
    }

    public sealed class Metadata : IList<Metadata.Entry>
    {
        public static readonly Metadata Empty = new Metadata();
        readonly List<Entry> entries = new List<Entry>();

        public void Add(string key, string value) { entries.Add(new Entry(key, value)); }
        public void Add(string key, byte[] valueBytes) { entries.Add(new Entry(key, valueBytes)); }
        public void Add(Entry item) { entries.Add(item); }
        public Entry Get(string key)
        {
            for (int i = entries.Count - 1; i >= 0; i--)
                if (entries[i].Key == key.ToLowerInvariant()) return entries[i];
            return null;
        }
        public string GetValue(string key) { var e = Get(key); return e == null ? null : e.Value; }

        public Entry this[int index] { get { return entries[index]; } set { entries[index] = value; } }
        public int Count { get { return entries.Count; } }
        public bool IsReadOnly { get { return false; } }
        public int IndexOf(Entry item) { return entries.IndexOf(item); }
        public void Insert(int index, Entry item) { entries.Insert(index, item); }
        public void RemoveAt(int index) { entries.RemoveAt(index); }
        public void Clear() { entries.Clear(); }
        public bool Contains(Entry item) { return entries.Contains(item); }
        public void CopyTo(Entry[] array, int arrayIndex) { entries.CopyTo(array, arrayIndex); }
        public bool Remove(Entry item) { return entries.Remove(item); }
        public IEnumerator<Entry> GetEnumerator() { return entries.GetEnumerator(); }
        IEnumerator IEnumerable.GetEnumerator() { return entries.GetEnumerator(); }

        public class Entry
        {
            readonly string value;
            readonly byte[] valueBytes;
            public Entry(string key, string value) { Key = key.ToLowerInvariant(); this.value = value; }
            public Entry(string key, byte[] valueBytes) { Key = key.ToLowerInvariant(); this.valueBytes = valueBytes; }
            public string Key { get; }
            public string Value { get { return value; } }
            public byte[] ValueBytes { get { return valueBytes; } }
            public bool IsBinary { get { return valueBytes != null; } }
        }
    }

    public class WriteOptions { }

    public struct CallOptions
    {
        public CallOptions(Metadata headers = null, DateTime? deadline = null,
                           CancellationToken cancellationToken = default(CancellationToken))
        {
            Headers = headers;
            Deadline = deadline;
            CancellationToken = cancellationToken;
        }
        public Metadata Headers { get; }
        public DateTime? Deadline { get; }
        public CancellationToken CancellationToken { get; }
        public CallOptions WithHeaders(Metadata headers) { return new CallOptions(headers, Deadline, CancellationToken); }
        public CallOptions WithDeadline(DateTime deadline) { return new CallOptions(Headers, deadline, CancellationToken); }
        public CallOptions WithCancellationToken(CancellationToken token) { return new CallOptions(Headers, Deadline, token); }
    }

    public enum MethodType { Unary, ClientStreaming, ServerStreaming, DuplexStreaming }

    public abstract class SerializationContext
    {
        public virtual void Complete(byte[] payload) { throw new NotImplementedException(); }
        public virtual IBufferWriter<byte> GetBufferWriter() { throw new NotImplementedException(); }
        public virtual void SetPayloadLength(int payloadLength) { throw new NotImplementedException(); }
        public virtual void Complete() { throw new NotImplementedException(); }
    }

    public abstract class DeserializationContext
    {
        public virtual int PayloadLength { get { return 0; } }
        public virtual byte[] PayloadAsNewBuffer() { throw new NotImplementedException(); }
        public virtual ReadOnlySequence<byte> PayloadAsReadOnlySequence() { throw new NotImplementedException(); }
    }

    public class Marshaller<T>
    {
        public Marshaller(Func<T, byte[]> serializer, Func<byte[], T> deserializer)
        {
            Serializer = serializer;
            Deserializer = deserializer;
        }
        public Marshaller(Action<T, SerializationContext> serializer, Func<DeserializationContext, T> deserializer)
        {
            ContextualSerializer = serializer;
            ContextualDeserializer = deserializer;
        }
        public Func<T, byte[]> Serializer { get; }
        public Func<byte[], T> Deserializer { get; }
        public Action<T, SerializationContext> ContextualSerializer { get; }
        public Func<DeserializationContext, T> ContextualDeserializer { get; }
    }

    public static class Marshallers
    {
        public static Marshaller<T> Create<T>(Func<T, byte[]> serializer, Func<byte[], T> deserializer)
        { return new Marshaller<T>(serializer, deserializer); }
        public static Marshaller<T> Create<T>(Action<T, SerializationContext> serializer, Func<DeserializationContext, T> deserializer)
        { return new Marshaller<T>(serializer, deserializer); }
    }

    public interface IMethod
    {
        MethodType Type { get; }
        string ServiceName { get; }
        string Name { get; }
        string FullName { get; }
    }

    public class Method<TRequest, TResponse> : IMethod
    {
        public Method(MethodType type, string serviceName, string name,
                      Marshaller<TRequest> requestMarshaller, Marshaller<TResponse> responseMarshaller)
        {
            Type = type;
            ServiceName = serviceName;
            Name = name;
            RequestMarshaller = requestMarshaller;
            ResponseMarshaller = responseMarshaller;
        }
        public MethodType Type { get; }
        public string ServiceName { get; }
        public string Name { get; }
        public string FullName { get { return "/" + ServiceName + "/" + Name; } }
        public Marshaller<TRequest> RequestMarshaller { get; }
        public Marshaller<TResponse> ResponseMarshaller { get; }
    }

    public interface IAsyncStreamReader<out T>
    {
        T Current { get; }
        Task<bool> MoveNext(CancellationToken cancellationToken);
    }

    public interface IAsyncStreamWriter<in T>
    {
        Task WriteAsync(T message);
        WriteOptions WriteOptions { get; set; }
    }

    public interface IClientStreamWriter<in T> : IAsyncStreamWriter<T>
    {
        Task CompleteAsync();
    }

    public sealed class AsyncUnaryCall<TResponse> : IDisposable
    {
        readonly Func<Status> getStatus; readonly Func<Metadata> getTrailers; readonly Action dispose;
        public AsyncUnaryCall(Task<TResponse> responseAsync, Task<Metadata> responseHeadersAsync,
                              Func<Status> getStatusFunc, Func<Metadata> getTrailersFunc, Action disposeAction)
        {
            ResponseAsync = responseAsync; ResponseHeadersAsync = responseHeadersAsync;
            getStatus = getStatusFunc; getTrailers = getTrailersFunc; dispose = disposeAction;
        }
        public Task<TResponse> ResponseAsync { get; }
        public Task<Metadata> ResponseHeadersAsync { get; }
        public System.Runtime.CompilerServices.TaskAwaiter<TResponse> GetAwaiter() { return ResponseAsync.GetAwaiter(); }
        public Status GetStatus() { return getStatus(); }
        public Metadata GetTrailers() { return getTrailers(); }
        public void Dispose() { dispose(); }
    }

    public sealed class AsyncServerStreamingCall<TResponse> : IDisposable
    {
        readonly Func<Status> getStatus; readonly Func<Metadata> getTrailers; readonly Action dispose;
        public AsyncServerStreamingCall(IAsyncStreamReader<TResponse> responseStream, Task<Metadata> responseHeadersAsync,
                                        Func<Status> getStatusFunc, Func<Metadata> getTrailersFunc, Action disposeAction)
        {
            ResponseStream = responseStream; ResponseHeadersAsync = responseHeadersAsync;
            getStatus = getStatusFunc; getTrailers = getTrailersFunc; dispose = disposeAction;
        }
        public IAsyncStreamReader<TResponse> ResponseStream { get; }
        public Task<Metadata> ResponseHeadersAsync { get; }
        public Status GetStatus() { return getStatus(); }
        public Metadata GetTrailers() { return getTrailers(); }
        public void Dispose() { dispose(); }
    }

    public sealed class AsyncClientStreamingCall<TRequest, TResponse> : IDisposable
    {
        readonly Func<Status> getStatus; readonly Func<Metadata> getTrailers; readonly Action dispose;
        public AsyncClientStreamingCall(IClientStreamWriter<TRequest> requestStream, Task<TResponse> responseAsync,
                                        Task<Metadata> responseHeadersAsync, Func<Status> getStatusFunc,
                                        Func<Metadata> getTrailersFunc, Action disposeAction)
        {
            RequestStream = requestStream; ResponseAsync = responseAsync; ResponseHeadersAsync = responseHeadersAsync;
            getStatus = getStatusFunc; getTrailers = getTrailersFunc; dispose = disposeAction;
        }
        public IClientStreamWriter<TRequest> RequestStream { get; }
        public Task<TResponse> ResponseAsync { get; }
        public Task<Metadata> ResponseHeadersAsync { get; }
        public Status GetStatus() { return getStatus(); }
        public Metadata GetTrailers() { return getTrailers(); }
        public void Dispose() { dispose(); }
    }

    public sealed class AsyncDuplexStreamingCall<TRequest, TResponse> : IDisposable
    {
        readonly Func<Status> getStatus; readonly Func<Metadata> getTrailers; readonly Action dispose;
        public AsyncDuplexStreamingCall(IClientStreamWriter<TRequest> requestStream, IAsyncStreamReader<TResponse> responseStream,
                                        Task<Metadata> responseHeadersAsync, Func<Status> getStatusFunc,
                                        Func<Metadata> getTrailersFunc, Action disposeAction)
        {
            RequestStream = requestStream; ResponseStream = responseStream; ResponseHeadersAsync = responseHeadersAsync;
            getStatus = getStatusFunc; getTrailers = getTrailersFunc; dispose = disposeAction;
        }
        public IClientStreamWriter<TRequest> RequestStream { get; }
        public IAsyncStreamReader<TResponse> ResponseStream { get; }
        public Task<Metadata> ResponseHeadersAsync { get; }
        public Status GetStatus() { return getStatus(); }
        public Metadata GetTrailers() { return getTrailers(); }
        public void Dispose() { dispose(); }
    }

    public abstract class CallInvoker
    {
        public abstract TResponse BlockingUnaryCall<TRequest, TResponse>(Method<TRequest, TResponse> method, string host, CallOptions options, TRequest request)
            where TRequest : class where TResponse : class;
        public abstract AsyncUnaryCall<TResponse> AsyncUnaryCall<TRequest, TResponse>(Method<TRequest, TResponse> method, string host, CallOptions options, TRequest request)
            where TRequest : class where TResponse : class;
        public abstract AsyncServerStreamingCall<TResponse> AsyncServerStreamingCall<TRequest, TResponse>(Method<TRequest, TResponse> method, string host, CallOptions options, TRequest request)
            where TRequest : class where TResponse : class;
        public abstract AsyncClientStreamingCall<TRequest, TResponse> AsyncClientStreamingCall<TRequest, TResponse>(Method<TRequest, TResponse> method, string host, CallOptions options)
            where TRequest : class where TResponse : class;
        public abstract AsyncDuplexStreamingCall<TRequest, TResponse> AsyncDuplexStreamingCall<TRequest, TResponse>(Method<TRequest, TResponse> method, string host, CallOptions options)
            where TRequest : class where TResponse : class;
    }

    public abstract class ChannelBase
    {
        protected ChannelBase(string target) { Target = target; }
        public string Target { get; }
        public abstract CallInvoker CreateCallInvoker();
    }

    public abstract class ClientBase
    {
        readonly ClientBaseConfiguration configuration;
        protected ClientBase() : this(new ClientBaseConfiguration(null)) { }
        protected ClientBase(ClientBaseConfiguration configuration) { this.configuration = configuration; }
        public ClientBase(ChannelBase channel) : this(channel.CreateCallInvoker()) { }
        public ClientBase(CallInvoker callInvoker) : this(new ClientBaseConfiguration(callInvoker)) { }
        protected CallInvoker CallInvoker { get { return configuration.CallInvoker; } }
        internal ClientBaseConfiguration Configuration { get { return configuration; } }

        protected internal class ClientBaseConfiguration
        {
            internal ClientBaseConfiguration(CallInvoker callInvoker) { CallInvoker = callInvoker; }
            internal CallInvoker CallInvoker { get; }
        }
    }

    public abstract class ClientBase<T> : ClientBase where T : ClientBase<T>
    {
        protected ClientBase() { }
        protected ClientBase(ClientBaseConfiguration configuration) : base(configuration) { }
        public ClientBase(ChannelBase channel) : base(channel) { }
        public ClientBase(CallInvoker callInvoker) : base(callInvoker) { }
        public T WithHost(string host) { return NewInstance(Configuration); }
        protected abstract T NewInstance(ClientBaseConfiguration configuration);
    }
}
