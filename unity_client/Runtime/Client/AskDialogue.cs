using System;
using System.Collections.Generic;
using System.Threading;
using System.Threading.Tasks;
using ArBridge.V1;
using Grpc.Core;

namespace ArBridge.Client
{
    /// <summary>
    /// A dialogue over Ask: one server-streaming call per turn, so it works where
    /// Converse cannot (gRPC-Web: WebGL, HTTP/1.1-only networks). The server keeps
    /// the session; when it has forgotten it (restart, idle expiry: NOT_FOUND) the
    /// turn is sent again on a new session carrying the dialogue so far.
    /// </summary>
    public sealed class AskDialogue : IDialogue
    {
        readonly Func<ArBridgeClient> clientOf;
        readonly ConverseStart start;
        readonly SynchronizationContext context;
        readonly CancellationTokenSource lifetime = new CancellationTokenSource();
        bool disposed;
        readonly DialogueLog log = new DialogueLog();
        readonly object gate = new object();
        SceneFeatures scene;
        bool sceneChanged;
        CancellationTokenSource inFlight;
        uint inFlightTurn;
        string inFlightQuestion = "";
        string inFlightText = "";
        uint nextTurnId = 1;
        // Set while the first call of a session is waiting for the server's id:
        // later turns wait for it instead of opening a second session.
        TaskCompletionSource<bool> opening;

        public event Action<uint, string> TextChunk;
        public event Action<uint, Completion> ResponseComplete;
        public event Action<uint, ActionCall> ActionCalled;
        public event Action<uint, Exception> Error;

        /// <param name="clientOf">The client for each call (so a refreshed token or a new channel applies).</param>
        /// <param name="resumeSessionId">A session id kept from earlier (e.g. before the app was suspended).</param>
        public AskDialogue(Func<ArBridgeClient> clientOf, ConverseStart start, string resumeSessionId = null)
        {
            if (clientOf == null) throw new ArgumentNullException("clientOf");
            this.clientOf = clientOf;
            this.start = start ?? new ConverseStart();
            scene = this.start.Scene;
            log.AddRange(this.start.History);
            SessionId = string.IsNullOrEmpty(resumeSessionId) ? null : resumeSessionId;
            context = SynchronizationContext.Current;
        }

        /// <summary>The server's id for this dialogue (null before the first reply).</summary>
        public string SessionId { get; private set; }

        public bool IsOpen { get { return !lifetime.IsCancellationRequested; } }

        /// <summary>Nothing to open: each turn is its own call.</summary>
        public Task StartAsync() { return Task.FromResult(0); }

        public async Task<uint> AskAsync(string text, SceneFeatures sceneUpdate = null, SamplingParams sampling = null,
                                         IEnumerable<Ray> rays = null)
        {
            uint id;
            CancellationTokenSource mine;
            lock (gate)
            {
                id = nextTurnId++;
                if (sceneUpdate != null) { scene = sceneUpdate; sceneChanged = true; }
                // The server interrupts the previous reply on this session by itself.
                mine = CancellationTokenSource.CreateLinkedTokenSource(lifetime.Token);
                inFlight = mine;
                inFlightTurn = id;
                inFlightQuestion = text ?? "";
                inFlightText = "";
            }
            var turn = new UserTurn { TurnId = id, Text = text ?? "" };
            if (sampling != null) turn.Sampling = sampling;
            if (rays != null) turn.Rays.AddRange(rays);  // where the wearer looks and points now
            try
            {
                try
                {
                    await SendAsync(turn, mine.Token);
                }
                catch (RpcException e) when (e.StatusCode == StatusCode.NotFound)
                {
                    await SendAsync(turn, mine.Token);  // SendAsync forgot the id: a new session
                }
            }
            catch (OperationCanceledException)
            {
                // Interrupted (InterruptAsync reported it) or disposed.
            }
            catch (Exception e)
            {
                Raise(() => { var h = Error; if (h != null) h(id, e); });
            }
            finally
            {
                lock (gate) if (inFlight == mine) inFlight = null;
                mine.Dispose();
            }
            return id;
        }

        async Task SendAsync(UserTurn turn, CancellationToken cancellationToken)
        {
            // Another turn is opening the session: wait for its id rather than open a second.
            while (true)
            {
                Task pending;
                lock (gate)
                {
                    if (SessionId != null || opening == null) break;
                    pending = opening.Task;
                }
                await pending;
            }
            var request = new AskRequest { UserTurn = turn };
            TaskCompletionSource<bool> mineOpening = null;
            bool sentScene;
            lock (gate)
            {
                if (SessionId == null)
                {
                    var start = this.start.Clone();
                    start.History.Clear();
                    start.History.AddRange(log.Snapshot());
                    if (scene != null) start.Scene = scene;
                    request.Start = start;
                    mineOpening = opening = new TaskCompletionSource<bool>();
                }
                else
                {
                    request.SessionId = SessionId;
                    if (sceneChanged && scene != null) request.Scene = scene;
                }
                sentScene = sceneChanged;
                sceneChanged = false;
            }
            var client = clientOf();
            var resume = client.ResumePolicy;
            if (resume != null) request.Stream = new StreamOptions { Resumable = true };
            bool answered = false;
            var progress = new StreamProgress();
            try
            {
                Action<AskResponse> handle = response =>
                {
                    if (!answered)
                    {
                        answered = true;
                        lock (gate) SessionId = response.SessionId;
                        if (mineOpening != null) ReleaseOpening(mineOpening);
                    }
                    if (response.EventCase == AskResponse.EventOneofCase.Completion
                        && response.Completion.SequenceIndex == 0) progress.First = response.Completion;
                    HandleResponse(turn, response);
                };
                Action<AskResponse> take = response =>
                {
                    if (progress.Accept(response.Seq, response.StreamId)) handle(response);
                };
                try
                {
                    using (var call = client.Raw.Ask(request, client.CallOptions(client.CallTimeout, cancellationToken)))
                    {
                        var stream = call.ResponseStream;
                        while (await ArBridgeClient.MoveNext(stream, cancellationToken)) take(stream.Current);
                    }
                }
                catch (RpcException e) when (resume != null && progress.StreamId.Length > 0 && progress.First == null
                                             && !cancellationToken.IsCancellationRequested
                                             && ReconnectPolicy.IsTransient(e.StatusCode))
                {
                    // The connection dropped mid-reply: the server kept the reply going.
                    await client.ResumeAsync(progress, r =>
                    {
                        var response = new AskResponse { SessionId = r.SessionId, TurnId = r.TurnId, Seq = r.Seq };
                        ArBridgeClient.CopyEvent(r, response);
                        handle(response);
                    }, e, cancellationToken);
                }
            }
            catch (OperationCanceledException)
            {
                client.CancelOnServer(progress);  // an interrupted reply stops on the server too
                throw;
            }
            catch (RpcException e)
            {
                lock (gate)
                {
                    // Not sent after all: the scene goes with the next turn.
                    if (!answered && sentScene) sceneChanged = true;
                    // Forgotten by the server: the next call starts again with the dialogue so far.
                    if (e.StatusCode == StatusCode.NotFound && SessionId == request.SessionId) SessionId = null;
                }
                throw;
            }
            finally
            {
                if (mineOpening != null) ReleaseOpening(mineOpening);
            }
        }

        void ReleaseOpening(TaskCompletionSource<bool> mine)
        {
            lock (gate) if (opening == mine) opening = null;
            mine.TrySetResult(true);
        }

        void HandleResponse(UserTurn turn, AskResponse response)
        {
            uint id = response.TurnId;
            if (response.EventCase == AskResponse.EventOneofCase.Chunk && response.Chunk.SequenceIndex == 0)
            {
                string text = response.Chunk.Text;
                lock (gate) if (inFlightTurn == turn.TurnId) inFlightText += text;
                Raise(() => { var h = TextChunk; if (h != null) h(id, text); });
            }
            else if (response.EventCase == AskResponse.EventOneofCase.Action
                     && response.Action.SequenceIndex == 0)
            {
                var action = response.Action;
                Raise(() => { var h = ActionCalled; if (h != null) h(id, action); });
            }
            else if (response.EventCase == AskResponse.EventOneofCase.Completion
                     && response.Completion.SequenceIndex == 0)
            {
                var completion = response.Completion;
                lock (gate)
                {
                    log.Record(turn.Text, completion.Text);
                    if (inFlightTurn == turn.TurnId) inFlightTurn = 0;
                }
                Raise(() => { var h = ResponseComplete; if (h != null) h(id, completion); });
            }
        }

        /// <summary>
        /// Stops the reply in flight: its call is cancelled (the server frees the slot
        /// and keeps what was said in the session), and it completes here as
        /// FINISH_REASON_CANCELLED with the text received so far.
        /// </summary>
        public Task InterruptAsync()
        {
            uint turn = 0;
            string heard = "";
            lock (gate)
            {
                if (inFlight != null && inFlightTurn != 0)
                {
                    turn = inFlightTurn;
                    heard = inFlightText;
                    inFlightTurn = 0;
                    log.Record(inFlightQuestion, heard);  // the server keeps the same
                    inFlight.Cancel();
                }
            }
            if (turn != 0)
            {
                var completion = new Completion { FinishReason = FinishReason.Cancelled, Text = heard };
                Raise(() => { var h = ResponseComplete; if (h != null) h(turn, completion); });
            }
            return Task.FromResult(0);
        }

        /// <summary>Kept and sent with the next turn.</summary>
        public Task UpdateSceneAsync(SceneFeatures update)
        {
            lock (gate) { scene = update; sceneChanged = true; }
            return Task.FromResult(0);
        }

        /// <summary>Cancels the turn in flight; later calls throw ObjectDisposedException.</summary>
        public void Dispose()
        {
            if (disposed) return;
            disposed = true;
            lifetime.Cancel();
            lifetime.Dispose();  // linked sources made from it are disposed by their own turns
        }

        void Raise(Action action)
        {
            if (context != null)
                context.Post(_ => { if (!lifetime.IsCancellationRequested) action(); }, null);
            else if (!lifetime.IsCancellationRequested)
                action();
        }
    }
}
