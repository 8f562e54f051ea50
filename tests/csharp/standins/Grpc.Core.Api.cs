// assembly: Grpc.Core.Api
// TESTS ONLY, never shipped. A stand-in for the part of Grpc.Core.Api (grpc-dotnet
// v2.59.0, src/Grpc.Core.Api) that the generated ServiceGrpc.cs and the package use,
// written from its public declarations: same names, signatures, defaults, and the
// behaviour the package can meet (Metadata.Empty is frozen, Metadata.Entry validates
// keys), so that mono's mcs can compile and run them on a machine without NuGet.
// Unity projects get the real Grpc.Core.Api from the package's declared dependencies.
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
        public static readonly Status DefaultCancelled = new Status(StatusCode.Cancelled, "");
        public Status(StatusCode statusCode, string detail) : this(statusCode, detail, null) { }
        public Status(StatusCode statusCode, string detail, Exception debugException)
        {
            StatusCode = statusCode; Detail = detail; DebugException = debugException;
        }
        public StatusCode StatusCode { get; }
        public string Detail { get; }
        public Exception DebugException { get; }
        public override string ToString()
        {
            var text = "Status(StatusCode=\"" + StatusCode + "\", Detail=\"" + Detail + "\"";
            if (DebugException != null)
                text += ", DebugException=\"" + DebugException.GetType() + ": " + DebugException.Message + "\"";
            return text + ")";
        }
    }

    public class RpcException : Exception
    {
        public RpcException(Status status) : this(status, Metadata.Empty, status.ToString()) { }
        public RpcException(Status status, string message) : this(status, Metadata.Empty, message) { }
        public RpcException(Status status, Metadata trailers) : this(status, trailers, status.ToString()) { }
        public RpcException(Status status, Metadata trailers, string message) : base(message, status.DebugException)
        {
            if (trailers == null) throw new ArgumentNullException("trailers");
            Status = status;
            Trailers = trailers;
        }
        public Status Status { get; }
        public StatusCode StatusCode { get { return Status.StatusCode; } }
        public Metadata Trailers { get; }
    }

    public sealed class Metadata : IList<Metadata.Entry>
    {
        public const string BinaryHeaderSuffix = "-bin";
        /// <summary>A read-only instance: adding to it throws InvalidOperationException.</summary>
        public static readonly Metadata Empty = new Metadata().Freeze();
        readonly List<Entry> entries = new List<Entry>();
        bool readOnly;

        public Metadata() { }
        internal Metadata Freeze() { readOnly = true; return this; }
        void CheckWriteable() { if (readOnly) throw new InvalidOperationException("Object is read only"); }

        public Entry Get(string key)
        {
            for (int i = entries.Count - 1; i >= 0; i--)
                if (string.Equals(entries[i].Key, key, StringComparison.OrdinalIgnoreCase)) return entries[i];
            return null;
        }
        public string GetValue(string key) { var e = Get(key); return e == null ? null : e.Value; }
        public byte[] GetValueBytes(string key) { var e = Get(key); return e == null ? null : e.ValueBytes; }
        public IEnumerable<Entry> GetAll(string key)
        {
            foreach (var e in entries) if (string.Equals(e.Key, key, StringComparison.OrdinalIgnoreCase)) yield return e;
        }
        public void Add(string key, string value) { Add(new Entry(key, value)); }
        public void Add(string key, byte[] valueBytes) { Add(new Entry(key, valueBytes)); }
        public int IndexOf(Entry item) { return entries.IndexOf(item); }
        public void Insert(int index, Entry item) { CheckWriteable(); entries.Insert(index, item); }
        public void RemoveAt(int index) { CheckWriteable(); entries.RemoveAt(index); }
        public Entry this[int index] { get { return entries[index]; } set { CheckWriteable(); entries[index] = value; } }
        public void Add(Entry item) { CheckWriteable(); entries.Add(item); }
        public void Clear() { CheckWriteable(); entries.Clear(); }
        public bool Contains(Entry item) { return entries.Contains(item); }
        public void CopyTo(Entry[] array, int arrayIndex) { entries.CopyTo(array, arrayIndex); }
        public int Count { get { return entries.Count; } }
        public bool IsReadOnly { get { return readOnly; } }
        public bool Remove(Entry item) { CheckWriteable(); return entries.Remove(item); }
        public IEnumerator<Entry> GetEnumerator() { return entries.GetEnumerator(); }
        IEnumerator IEnumerable.GetEnumerator() { return entries.GetEnumerator(); }

        public class Entry
        {
            readonly string value;
            readonly byte[] valueBytes;

            public Entry(string key, byte[] valueBytes)
            {
                Key = NormalizeKey(key);
                if (!Key.EndsWith(BinaryHeaderSuffix, StringComparison.Ordinal))
                    throw new ArgumentException("Key for binary valued metadata entry needs to have '-bin' suffix indicating binary value.");
                if (valueBytes == null) throw new ArgumentNullException("valueBytes");
                this.valueBytes = (byte[])valueBytes.Clone();
            }

            public Entry(string key, string value)
            {
                Key = NormalizeKey(key);
                if (Key.EndsWith(BinaryHeaderSuffix, StringComparison.Ordinal))
                    throw new ArgumentException("Key for ASCII valued metadata entry cannot have suffix indicating binary value.");
                if (value == null) throw new ArgumentNullException("value");
                this.value = value;
            }

            static string NormalizeKey(string key)
            {
                if (key == null) throw new ArgumentNullException("key");
                foreach (char c in key)
                {
                    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')
                              || c == '.' || c == '_' || c == '-';
                    if (!ok)
                        throw new ArgumentException("Metadata entry key not valid. Keys can only contain lowercase alphanumeric characters, underscores, hyphens and dots.");
                }
                return key.ToLowerInvariant();
            }

            public string Key { get; }
            public byte[] ValueBytes
            {
                get { return valueBytes != null ? (byte[])valueBytes.Clone() : System.Text.Encoding.ASCII.GetBytes(value); }
            }
            public string Value
            {
                get
                {
                    if (valueBytes != null) throw new InvalidOperationException("Cannot access string value of a binary metadata entry");
                    return value;
                }
            }
            public bool IsBinary { get { return value == null; } }
            public override string ToString()
            {
                return IsBinary ? "[Entry: key=" + Key + ", valueBytes=" + valueBytes + "]" : "[Entry: key=" + Key + ", value=" + value + "]";
            }
        }
    }

    [Flags] public enum WriteFlags { BufferHint = 0x1, NoCompress = 0x2 }

    public class WriteOptions
    {
        public static readonly WriteOptions Default = new WriteOptions();
        public WriteOptions(WriteFlags flags = default(WriteFlags)) { Flags = flags; }
        public WriteFlags Flags { get; }
    }

    public abstract class ContextPropagationToken
    {
        internal ContextPropagationToken() { }
    }

    public abstract class CallCredentials
    {
        internal CallCredentials() { }
    }

    public abstract class ChannelCredentials
    {
        public ChannelCredentials() { }
    }

    public struct CallOptions
    {
        public CallOptions(Metadata headers = null, DateTime? deadline = null,
                           CancellationToken cancellationToken = default(CancellationToken),
                           WriteOptions writeOptions = null, ContextPropagationToken propagationToken = null,
                           CallCredentials credentials = null)
        {
            Headers = headers; Deadline = deadline; CancellationToken = cancellationToken;
            WriteOptions = writeOptions; PropagationToken = propagationToken; Credentials = credentials;
            IsWaitForReady = false;
        }
        public Metadata Headers { get; private set; }
        public DateTime? Deadline { get; private set; }
        public CancellationToken CancellationToken { get; private set; }
        public WriteOptions WriteOptions { get; private set; }
        public ContextPropagationToken PropagationToken { get; private set; }
        public CallCredentials Credentials { get; private set; }
        public bool IsWaitForReady { get; private set; }
        public CallOptions WithHeaders(Metadata headers) { var o = this; o.Headers = headers; return o; }
        public CallOptions WithDeadline(DateTime deadline) { var o = this; o.Deadline = deadline; return o; }
        public CallOptions WithCancellationToken(CancellationToken cancellationToken) { var o = this; o.CancellationToken = cancellationToken; return o; }
        public CallOptions WithWriteOptions(WriteOptions writeOptions) { var o = this; o.WriteOptions = writeOptions; return o; }
        public CallOptions WithPropagationToken(ContextPropagationToken propagationToken) { var o = this; o.PropagationToken = propagationToken; return o; }
        public CallOptions WithCredentials(CallCredentials credentials) { var o = this; o.Credentials = credentials; return o; }
        public CallOptions WithWaitForReady(bool waitForReady = true) { var o = this; o.IsWaitForReady = waitForReady; return o; }
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
        protected ChannelBase(string target)
        {
            if (target == null) throw new ArgumentNullException("target");
            Target = target;
        }
        public string Target { get; }
        public abstract CallInvoker CreateCallInvoker();
        public Task ShutdownAsync() { return ShutdownAsyncCore(); }
        protected virtual Task ShutdownAsyncCore() { return Task.FromResult(0); }
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
