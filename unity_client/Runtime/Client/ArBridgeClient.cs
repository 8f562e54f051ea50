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

        /// <summary>
        /// When set, captions and generations are asked for as resumable replies
        /// (StreamOptions.resumable): a transient failure mid-reply (the headset
        /// changed networks) is followed, after this policy's backoff, by a Resume
        /// from the last response received, so the text goes on without a word
        /// lost or repeated and nothing is generated twice. null = off.
        /// </summary>
        public ReconnectPolicy Resume = new ReconnectPolicy();
    }

    /// <summary>Where a reply's stream stands: its id and the last seq received.</summary>
    sealed class StreamProgress
    {
        public string StreamId = "";
        public ulong LastSeq;
        public Completion First;

        /// <summary>Notes a response's stream id and seq; false for one already seen
        /// (a resumed stream never shows an event twice). Seq 0: not numbered.</summary>
        public bool Accept(ulong seq, string streamId)
        {
            if (!string.IsNullOrEmpty(streamId)) StreamId = streamId;
            if (seq == 0) return true;
            if (seq <= LastSeq) return false;
            LastSeq = seq;
            return true;
        }
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
            if (options.Resume != null)
            {
                request = request.Clone();
                request.Stream = new StreamOptions { Resumable = true };
            }
            var call = Raw.DescribeScene(request, CallOptions(options.CallTimeout, cancellationToken));
            return ReadResumingAsync(call, r => r.Chunk, r => r.Completion, r => r.Seq, r => r.StreamId,
                                     onChunk, cancellationToken);
        }

        /// <summary>Raw prompt completion, streamed like <see cref="DescribeSceneAsync"/>.</summary>
        public Task<Completion> GenerateAsync(GenerateRequest request, Action<TokenChunk> onChunk,
                                              CancellationToken cancellationToken = default(CancellationToken))
        {
            if (options.Resume != null)
            {
                request = request.Clone();
                request.Stream = new StreamOptions { Resumable = true };
            }
            var call = Raw.Generate(request, CallOptions(options.CallTimeout, cancellationToken));
            return ReadResumingAsync(call, r => r.Chunk, r => r.Completion, r => r.Seq, r => r.StreamId,
                                     onChunk, cancellationToken);
        }

        // Reads the reply; after a transient failure, Resumes it from the last seq
        // received (with the Resume policy's backoff) until it ends or the server no
        // longer holds it (NOT_FOUND, passed on as the caller's error).
        async Task<Completion> ReadResumingAsync<TResponse>(
            AsyncServerStreamingCall<TResponse> call, Func<TResponse, TokenChunk> chunkOf,
            Func<TResponse, Completion> completionOf, Func<TResponse, ulong> seqOf,
            Func<TResponse, string> streamIdOf, Action<TokenChunk> onChunk,
            CancellationToken cancellationToken)
        {
            var progress = new StreamProgress();
            RpcException failure;
            try
            {
                await ReadTextStreamAsync(call, chunkOf, completionOf, seqOf, streamIdOf, onChunk, progress,
                                          cancellationToken);
                return progress.First;
            }
            catch (RpcException e) when (CanResume(e, progress, cancellationToken))
            {
                failure = e;
            }
            catch (OperationCanceledException)
            {
                CancelOnServer(progress);
                throw;
            }
            try
            {
                await ResumeAsync(progress, r =>
                {
                    if (r.Chunk != null) { if (onChunk != null) onChunk(r.Chunk); }
                    else if (r.Completion != null && r.Completion.SequenceIndex == 0) progress.First = r.Completion;
                }, failure, cancellationToken);
            }
            catch (OperationCanceledException)
            {
                CancelOnServer(progress);
                throw;
            }
            return progress.First;
        }

        // A resumed event into the reply's own response type: the one event set (assigning
        // null to another case would clear the oneof).
        internal static void CopyEvent(ResumeResponse r, AskResponse into)
        {
            switch (r.EventCase)
            {
                case ResumeResponse.EventOneofCase.Chunk: into.Chunk = r.Chunk; break;
                case ResumeResponse.EventOneofCase.Action: into.Action = r.Action; break;
                case ResumeResponse.EventOneofCase.Completion: into.Completion = r.Completion; break;
            }
        }

        internal static void CopyEvent(ResumeResponse r, ConverseResponse into)
        {
            switch (r.EventCase)
            {
                case ResumeResponse.EventOneofCase.Chunk: into.Chunk = r.Chunk; break;
                case ResumeResponse.EventOneofCase.Action: into.Action = r.Action; break;
                case ResumeResponse.EventOneofCase.Completion: into.Completion = r.Completion; break;
            }
        }

        /// <summary>The Resume policy in force (ArBridgeClientOptions.Resume), or null.</summary>
        internal ReconnectPolicy ResumePolicy { get { return options.Resume; } }

        // Resumes `progress`'s stream after `failure`, with the policy's backoff, each
        // response newer than the last seq handed to `take`, until the reply ends.
        // Throws the last transient failure when the tries run out, and any other
        // status (NOT_FOUND: the server no longer holds the reply) at once.
        internal async Task ResumeAsync(StreamProgress progress, Action<ResumeResponse> take,
                                        RpcException failure, CancellationToken cancellationToken)
        {
            for (int attempt = 1; attempt <= options.Resume.MaxAttempts; attempt++)
            {
                ulong before = progress.LastSeq;
                try
                {
                    await Task.Delay(options.Resume.DelayBefore(attempt), cancellationToken);
                    var call = Raw.Resume(new ResumeRequest { StreamId = progress.StreamId, AfterSeq = progress.LastSeq },
                                          CallOptions(options.CallTimeout, cancellationToken));
                    using (call)
                    {
                        var stream = call.ResponseStream;
                        while (await MoveNext(stream, cancellationToken))
                        {
                            if (progress.Accept(stream.Current.Seq, stream.Current.StreamId)) take(stream.Current);
                        }
                    }
                    return;
                }
                catch (RpcException e) when (CanResume(e, progress, cancellationToken))
                {
                    failure = e;
                    if (progress.LastSeq > before) attempt = 0;  // it moved on: a fresh series of tries
                }
            }
            throw failure;
        }

        bool CanResume(RpcException e, StreamProgress progress, CancellationToken cancellationToken)
        {
            return options.Resume != null && progress.StreamId.Length > 0 && progress.First == null
                && !cancellationToken.IsCancellationRequested && ReconnectPolicy.IsTransient(e.StatusCode);
        }

        // The caller gave up: a resumable reply would otherwise run on for the
        // server's grace time (a cancelled call only detaches it).
        internal void CancelOnServer(StreamProgress progress)
        {
            if (options.Resume == null || progress.StreamId.Length == 0 || progress.First != null) return;
            try
            {
                var cancel = Raw.CancelStreamAsync(new CancelStreamRequest { StreamId = progress.StreamId },
                                                   CallOptions(TimeSpan.FromSeconds(10), CancellationToken.None));
                cancel.ResponseAsync.ContinueWith(t => { var ignored = t.Exception; },
                                                  TaskContinuationOptions.OnlyOnFaulted);
            }
            catch (RpcException) { }
        }

        // DescribeScene, Generate and Resume stream the same events: chunks, then one
        // Completion per sequence (the accessors return null for the other case). An
        // event at or before the last seq seen is never shown twice.
        static async Task ReadTextStreamAsync<TResponse>(
            AsyncServerStreamingCall<TResponse> call, Func<TResponse, TokenChunk> chunkOf,
            Func<TResponse, Completion> completionOf, Func<TResponse, ulong> seqOf,
            Func<TResponse, string> streamIdOf, Action<TokenChunk> onChunk, StreamProgress progress,
            CancellationToken cancellationToken)
        {
            using (call)
            {
                var stream = call.ResponseStream;
                while (await MoveNext(stream, cancellationToken))
                {
                    var response = stream.Current;
                    if (!progress.Accept(seqOf(response), streamIdOf(response))) continue;
                    var chunk = chunkOf(response);
                    var completion = completionOf(response);
                    if (chunk != null)
                    {
                        if (onChunk != null) onChunk(chunk);
                    }
                    else if (completion != null && completion.SequenceIndex == 0)
                    {
                        progress.First = completion;
                    }
                }
            }
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
