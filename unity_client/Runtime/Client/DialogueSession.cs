using System;
using System.Collections.Generic;
using System.Threading;
using System.Threading.Tasks;
using ArBridge.V1;
using Grpc.Core;

namespace ArBridge.Client
{
    /// <summary>
    /// One Converse stream: ask, interrupt, update the scene; replies arrive as
    /// events. When the connection breaks (Wi-Fi handover, server restart) the
    /// session reopens the stream with backoff and resends the dialogue so far,
    /// so the conversation continues where it was. The reply that was streaming
    /// at that moment is resumed where it broke (its text goes on, nothing twice)
    /// when the client's Resume policy is on; otherwise, or when the server no
    /// longer holds it, its turn ends with an Error event.
    ///
    /// Events are raised on the SynchronizationContext that created the session
    /// (Unity's main thread when created from a MonoBehaviour), one at a time.
    /// </summary>
    public sealed class DialogueSession : IDialogue
    {
        readonly ArBridgeClient client;
        readonly ReconnectPolicy reconnect;
        readonly ConverseStart start;
        readonly SynchronizationContext context;
        readonly CancellationTokenSource lifetime = new CancellationTokenSource();
        readonly SemaphoreSlim writeLock = new SemaphoreSlim(1, 1);
        readonly object gate = new object();
        readonly DialogueLog log = new DialogueLog();
        readonly Dictionary<uint, string> asked = new Dictionary<uint, string>();
        SceneFeatures scene;
        AsyncDuplexStreamingCall<ConverseRequest, ConverseResponse> call;
        uint nextTurnId = 1;
        StreamProgress replying;  // the resumable reply streaming now, and its turn
        uint replyingTurn;
        StreamProgress resuming;  // a reply being resumed after a break
        Task readLoop;
        bool disposed;

        /// <summary>(turn id, text) for every piece of a reply, in order.</summary>
        public event Action<uint, string> TextChunk;
        /// <summary>(turn id, completion) when a reply ends, however it ends.</summary>
        public event Action<uint, Completion> ResponseComplete;
        public event Action<uint, ActionCall> ActionCalled;
        /// <summary>A failure: of one turn (turn id) or of the session (turn id 0).</summary>
        public event Action<uint, Exception> Error;
        /// <summary>(attempt, delay) before the stream is reopened.</summary>
        public event Action<int, TimeSpan> Reconnecting;

        /// <summary>
        /// Dialogue turns kept for a reconnect (oldest dropped first). The server
        /// refuses a history longer than its max_dialogue_turns (256 by default).
        /// </summary>
        public int MaxHistoryTurns { get { return log.MaxTurns; } set { log.MaxTurns = value; } }

        internal DialogueSession(ArBridgeClient client, ConverseStart start, ReconnectPolicy reconnect)
        {
            this.client = client;
            this.start = start ?? new ConverseStart();
            this.reconnect = reconnect;
            scene = this.start.Scene;
            log.AddRange(this.start.History);
            context = SynchronizationContext.Current;
        }

        /// <summary>True until the session is disposed or has given up reconnecting.</summary>
        public bool IsOpen { get; private set; }

        /// <summary>Completes when the session has ended (disposed, or gave up).</summary>
        public Task Closed { get { return readLoop ?? Task.FromResult(0); } }

        /// <summary>Opens the stream. Events start flowing after this.</summary>
        public async Task StartAsync()
        {
            if (disposed) throw new ObjectDisposedException("DialogueSession");
            await OpenAsync();
            IsOpen = true;
            readLoop = ReadLoopAsync();
        }

        /// <summary>Sends a user turn (and a scene update first, when given). Returns its turn id.</summary>
        public async Task<uint> AskAsync(string text, SceneFeatures sceneUpdate = null, SamplingParams sampling = null,
                                         IEnumerable<Ray> rays = null)
        {
            uint id;
            lock (gate)
            {
                id = nextTurnId++;
                asked[id] = text;
                if (sceneUpdate != null) scene = sceneUpdate;
            }
            var turn = new UserTurn { TurnId = id, Text = text ?? "" };
            if (sampling != null) turn.Sampling = sampling;
            if (rays != null) turn.Rays.AddRange(rays);  // where the wearer looks and points now
            try
            {
                if (sceneUpdate != null) await WriteAsync(new ConverseRequest { SceneUpdate = sceneUpdate });
                await WriteAsync(new ConverseRequest { UserTurn = turn });
            }
            catch
            {
                lock (gate) asked.Remove(id);  // never sent: no reply will come for it
                throw;
            }
            return id;
        }

        /// <summary>Stops the reply in flight (it completes with FINISH_REASON_CANCELLED).</summary>
        public Task InterruptAsync()
        {
            StreamProgress resumed;
            lock (gate) resumed = resuming;
            if (resumed != null) client.CancelOnServer(resumed);  // a resumed reply runs apart
            return WriteAsync(new ConverseRequest { Cancel = new CancelReply() });
        }

        /// <summary>Replaces the scene the next replies are grounded in.</summary>
        public Task UpdateSceneAsync(SceneFeatures update)
        {
            lock (gate) scene = update;
            return WriteAsync(new ConverseRequest { SceneUpdate = update });
        }

        /// <summary>Ends the session: the stream is cancelled and no more events come.</summary>
        public void Dispose()
        {
            if (disposed) return;
            disposed = true;
            IsOpen = false;
            lifetime.Cancel();
            var current = call;
            if (current != null) current.Dispose();
            // The token source goes once nothing can read its token any more.
            var loop = readLoop;
            if (loop == null) lifetime.Dispose();
            else loop.ContinueWith(_ => lifetime.Dispose(), TaskScheduler.Default);
        }

        async Task OpenAsync()
        {
            var opening = start.Clone();
            lock (gate)
            {
                opening.History.Clear();
                opening.History.AddRange(log.Snapshot());
                if (scene != null) opening.Scene = scene;
            }
            if (client.ResumePolicy != null) opening.Stream = new StreamOptions { Resumable = true };
            // Under the write lock: no user turn may reach the new stream before
            // its ConverseStart, and no write is in progress on the old one.
            await writeLock.WaitAsync(lifetime.Token);
            try
            {
                var previous = call;
                call = client.Raw.Converse(client.CallOptions(null, lifetime.Token));
                if (previous != null) previous.Dispose();
                await call.RequestStream.WriteAsync(new ConverseRequest { Start = opening });
            }
            finally
            {
                writeLock.Release();
            }
        }

        async Task WriteAsync(ConverseRequest request)
        {
            if (disposed) throw new ObjectDisposedException("DialogueSession");
            if (call == null)
                throw new InvalidOperationException("DialogueSession: call StartAsync() before sending turns");
            // gRPC allows one write at a time per stream.
            await writeLock.WaitAsync(lifetime.Token);
            try
            {
                await call.RequestStream.WriteAsync(request);
            }
            finally
            {
                writeLock.Release();
            }
        }

        async Task ReadLoopAsync()
        {
            try
            {
                await ReadUntilClosedAsync();
            }
            finally
            {
                IsOpen = false;
            }
        }

        async Task ReadUntilClosedAsync()
        {
            int failures = 0;
            while (!lifetime.IsCancellationRequested)
            {
                try
                {
                    var stream = call.ResponseStream;
                    while (await ArBridgeClient.MoveNext(stream, lifetime.Token))
                    {
                        failures = 0;
                        Track(stream.Current);
                        Handle(stream.Current);
                    }
                    if (lifetime.IsCancellationRequested) break;
                    // The server closed the stream (restart, connection age): reopen.
                    throw new RpcException(new Status(StatusCode.Unavailable, "server ended the dialogue stream"));
                }
                catch (RpcException e) when (!lifetime.IsCancellationRequested
                                             && ReconnectPolicy.IsTransient(e.StatusCode)
                                             && failures < reconnect.MaxAttempts)
                {
                    StreamProgress lost;
                    uint lostTurn;
                    lock (gate)
                    {
                        lost = client.ResumePolicy != null ? replying : null;
                        lostTurn = replyingTurn;
                        replying = null;
                    }
                    FailTurnsInFlight(e, lost != null ? lostTurn : 0);
                    if (lost != null) { var resumed = ResumeReplyAsync(lost, lostTurn, e); }
                    failures++;
                    var delay = reconnect.DelayBefore(failures);
                    Raise(() => { var h = Reconnecting; if (h != null) h(failures, delay); });
                    try
                    {
                        await Task.Delay(delay, lifetime.Token);
                        await OpenAsync();
                    }
                    catch (OperationCanceledException) { break; }
                    catch (RpcException) { /* the next read reports it */ }
                    catch (Exception reopenFailed)
                    {
                        // Not a transport hiccup (a disposed channel, a broken handler):
                        // the session ends, and says why, instead of faulting unseen.
                        if (!lifetime.IsCancellationRequested)
                            Raise(() => { var h = Error; if (h != null) h(0, reopenFailed); });
                        break;
                    }
                }
                catch (OperationCanceledException) { break; }
                catch (Exception e)
                {
                    if (!lifetime.IsCancellationRequested)
                    {
                        FailTurnsInFlight(e);
                        Raise(() => { var h = Error; if (h != null) h(0, e); });
                    }
                    break;
                }
            }
        }

        // Where the reply streaming now stands (its stream_id comes with its first response).
        void Track(ConverseResponse response)
        {
            lock (gate)
            {
                if (!string.IsNullOrEmpty(response.StreamId))
                {
                    replying = new StreamProgress { StreamId = response.StreamId };
                    replyingTurn = response.TurnId;
                }
                if (replying == null || response.TurnId != replyingTurn) return;
                replying.Accept(response.Seq, null);
                if (response.EventCase == ConverseResponse.EventOneofCase.Completion
                    && response.Completion.SequenceIndex == 0) replying = null;
            }
        }

        // The reply that was streaming when the connection broke goes on, from the
        // server that kept it, beside the reopened stream.
        async Task ResumeReplyAsync(StreamProgress progress, uint turn, RpcException failure)
        {
            lock (gate) resuming = progress;
            try
            {
                await client.ResumeAsync(progress, r =>
                {
                    var response = new ConverseResponse { TurnId = turn, Seq = r.Seq };
                    ArBridgeClient.CopyEvent(r, response);
                    if (r.Completion != null && r.Completion.SequenceIndex == 0) progress.First = r.Completion;
                    Handle(response);
                }, failure, lifetime.Token);
            }
            catch (OperationCanceledException) { }
            catch (Exception e)
            {
                bool pending;
                lock (gate) pending = asked.Remove(turn);
                if (pending) Raise(() => { var h = Error; if (h != null) h(turn, e); });
            }
            finally
            {
                lock (gate) if (resuming == progress) resuming = null;
            }
        }

        void Handle(ConverseResponse response)
        {
            uint id = response.TurnId;
            if (response.EventCase == ConverseResponse.EventOneofCase.Chunk)
            {
                if (response.Chunk.SequenceIndex != 0) return;  // alternatives: not part of the dialogue
                string text = response.Chunk.Text;
                Raise(() => { var h = TextChunk; if (h != null) h(id, text); });
            }
            else if (response.EventCase == ConverseResponse.EventOneofCase.Action)
            {
                var action = response.Action;
                if (action.SequenceIndex != 0) return;
                Raise(() => { var h = ActionCalled; if (h != null) h(id, action); });
            }
            else if (response.EventCase == ConverseResponse.EventOneofCase.Completion)
            {
                var completion = response.Completion;
                if (completion.SequenceIndex != 0) return;
                lock (gate)
                {
                    string question;
                    if (asked.TryGetValue(id, out question))
                    {
                        asked.Remove(id);
                        // Kept for a reconnect: the server is told the dialogue so far.
                        log.Record(question, completion.Text);
                    }
                }
                Raise(() => { var h = ResponseComplete; if (h != null) h(id, completion); });
            }
        }

        void FailTurnsInFlight(Exception cause, uint resumed = 0)
        {
            List<uint> lost;
            lock (gate)
            {
                lost = new List<uint>(asked.Keys);
                lost.Remove(resumed);
                foreach (var id in lost) asked.Remove(id);
            }
            foreach (var id in lost)
            {
                uint turn = id;
                Raise(() => { var h = Error; if (h != null) h(turn, cause); });
            }
        }

        void Raise(Action action)
        {
            // Re-checked when the post runs: nothing is raised after Dispose.
            if (context != null)
                context.Post(_ => { if (!lifetime.IsCancellationRequested) action(); }, null);
            else if (!lifetime.IsCancellationRequested)
                action();
        }
    }
}
