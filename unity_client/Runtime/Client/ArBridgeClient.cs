// The plain C# client: no UnityEngine types, so it runs (and is tested) outside
// Unity too. Kept within C# 7.2 for every Unity version the package supports.
using System;
using System.Threading;
using System.Threading.Tasks;
using ArBridge.V1;
using Grpc.Core;

namespace ArBridge.Client
{
    /// <summary>Connection-wide settings: auth and default deadline.</summary>
    public sealed class ArBridgeClientOptions
    {
        /// <summary>Sent as "authorization: Bearer ..." on every call when set.</summary>
        public string BearerToken;

        /// <summary>Deadline of a caption or generation call; null = none.</summary>
        public TimeSpan? CallTimeout = TimeSpan.FromSeconds(60);
    }

    /// <summary>
    /// Streams captions and text from an ArBridge server over any gRPC
    /// <see cref="CallInvoker"/> (Grpc.Net.Client with an HTTP/2 handler on
    /// native players, gRPC-Web on WebGL: see ArBridgeChannels).
    /// </summary>
    public sealed class ArBridgeClient
    {
        readonly ArBridgeClientOptions options;

        public ArBridgeClient(CallInvoker callInvoker, ArBridgeClientOptions options = null)
        {
            if (callInvoker == null) throw new ArgumentNullException("callInvoker");
            this.options = options ?? new ArBridgeClientOptions();
            Raw = new ArBridgeService.ArBridgeServiceClient(callInvoker);
        }

        /// <summary>The generated client, for calls this class does not wrap.</summary>
        public ArBridgeService.ArBridgeServiceClient Raw { get; }

        /// <summary>
        /// Captions a scene. <paramref name="onChunk"/> runs for every piece of text as
        /// it arrives, on the caller's synchronization context (Unity's main thread
        /// when called from a MonoBehaviour); with num_return_sequences > 1 the chunks
        /// of all sequences come through (see TokenChunk.SequenceIndex). Returns the
        /// Completion of sequence 0;
        /// throws RpcException with the server's status on failure and
        /// OperationCanceledException when <paramref name="cancellationToken"/> fires.
        /// </summary>
        public Task<Completion> DescribeSceneAsync(DescribeSceneRequest request, Action<TokenChunk> onChunk,
                                                   CancellationToken cancellationToken = default(CancellationToken))
        {
            var call = Raw.DescribeScene(request, CallOptions(options.CallTimeout, cancellationToken));
            return ReadTextStreamAsync(call, r => r.Chunk, r => r.Completion, onChunk, cancellationToken);
        }

        /// <summary>Raw prompt completion, streamed like <see cref="DescribeSceneAsync"/>.</summary>
        public Task<Completion> GenerateAsync(GenerateRequest request, Action<TokenChunk> onChunk,
                                              CancellationToken cancellationToken = default(CancellationToken))
        {
            var call = Raw.Generate(request, CallOptions(options.CallTimeout, cancellationToken));
            return ReadTextStreamAsync(call, r => r.Chunk, r => r.Completion, onChunk, cancellationToken);
        }

        // DescribeScene and Generate stream the same events: chunks, then one
        // Completion per sequence (the accessors return null for the other case).
        static async Task<Completion> ReadTextStreamAsync<TResponse>(
            AsyncServerStreamingCall<TResponse> call, Func<TResponse, TokenChunk> chunkOf,
            Func<TResponse, Completion> completionOf, Action<TokenChunk> onChunk,
            CancellationToken cancellationToken)
        {
            Completion first = null;
            using (call)
            {
                var stream = call.ResponseStream;
                while (await MoveNext(stream, cancellationToken))
                {
                    var chunk = chunkOf(stream.Current);
                    var completion = completionOf(stream.Current);
                    if (chunk != null)
                    {
                        if (onChunk != null) onChunk(chunk);
                    }
                    else if (completion != null && completion.SequenceIndex == 0)
                    {
                        first = completion;
                    }
                }
            }
            return first;
        }

        /// <summary>A dialogue session (Converse) that reconnects on transport failures. Needs HTTP/2.</summary>
        public DialogueSession StartDialogue(ConverseStart start, ReconnectPolicy reconnect = null)
        {
            return new DialogueSession(this, start, reconnect ?? new ReconnectPolicy());
        }

        /// <summary>
        /// A dialogue over Ask, one call per turn: for gRPC-Web (WebGL), where Converse
        /// cannot run. <paramref name="resumeSessionId"/> continues a session kept from earlier.
        /// </summary>
        public AskDialogue StartAskDialogue(ConverseStart start, string resumeSessionId = null)
        {
            return new AskDialogue(() => this, start, resumeSessionId);
        }

        /// <summary>The deadline each call gets (ArBridgeClientOptions.CallTimeout).</summary>
        public TimeSpan? CallTimeout { get { return options.CallTimeout; } }

        internal CallOptions CallOptions(TimeSpan? timeout, CancellationToken cancellationToken)
        {
            Metadata headers = null;
            if (!string.IsNullOrEmpty(options.BearerToken))
            {
                headers = new Metadata();
                headers.Add("authorization", "Bearer " + options.BearerToken);
            }
            DateTime? deadline = null;
            if (timeout.HasValue) deadline = DateTime.UtcNow + timeout.Value;
            return new CallOptions(headers, deadline, cancellationToken);
        }

        // A cancelled token surfaces as OperationCanceledException whatever the
        // transport reports (Grpc.Net.Client says Cancelled, others differ).
        internal static async Task<bool> MoveNext<T>(IAsyncStreamReader<T> stream, CancellationToken cancellationToken)
        {
            try
            {
                return await stream.MoveNext(cancellationToken);
            }
            catch (RpcException e) when (e.StatusCode == StatusCode.Cancelled && cancellationToken.IsCancellationRequested)
            {
                throw new OperationCanceledException(cancellationToken);
            }
        }
    }
}
