using System;
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
        readonly ArBridgeClient client;
        readonly ConverseStart start;
        readonly SynchronizationContext context;
        readonly CancellationTokenSource lifetime = new CancellationTokenSource();
        readonly DialogueLog log = new DialogueLog();
        readonly object gate = new object();
        SceneFeatures scene;
        bool sceneChanged;
        CancellationTokenSource inFlight;
        uint nextTurnId = 1;

        public event Action<uint, string> TextChunk;
        public event Action<uint, Completion> ResponseComplete;
        public event Action<uint, Exception> Error;

        /// <param name="resumeSessionId">A session id kept from earlier (e.g. before the app was suspended).</param>
        internal AskDialogue(ArBridgeClient client, ConverseStart start, string resumeSessionId)
        {
            this.client = client;
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

        public async Task<uint> AskAsync(string text, SceneFeatures sceneUpdate = null, SamplingParams sampling = null)
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
            }
            var turn = new UserTurn { TurnId = id, Text = text ?? "" };
            if (sampling != null) turn.Sampling = sampling;
            try
            {
                try
                {
                    await SendAsync(turn, mine.Token);
                }
                catch (RpcException e) when (e.StatusCode == StatusCode.NotFound && SessionId != null)
                {
                    SessionId = null;  // forgotten by the server: start again with the dialogue so far
                    await SendAsync(turn, mine.Token);
                }
            }
            catch (OperationCanceledException)
            {
                // Interrupted or disposed: nothing to report.
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
            var request = new AskRequest { UserTurn = turn };
            lock (gate)
            {
                if (SessionId == null)
                {
                    var opening = start.Clone();
                    opening.History.Clear();
                    opening.History.AddRange(log.Snapshot());
                    if (scene != null) opening.Scene = scene;
                    request.Start = opening;
                }
                else
                {
                    request.SessionId = SessionId;
                    if (sceneChanged && scene != null) request.Scene = scene;
                }
                sceneChanged = false;
            }
            using (var call = client.Raw.Ask(request, client.CallOptions(null, cancellationToken)))
            {
                var stream = call.ResponseStream;
                while (await ArBridgeClient.MoveNext(stream, cancellationToken))
                {
                    var response = stream.Current;
                    SessionId = response.SessionId;
                    uint id = response.TurnId;
                    if (response.EventCase == AskResponse.EventOneofCase.Chunk && response.Chunk.SequenceIndex == 0)
                    {
                        string text = response.Chunk.Text;
                        Raise(() => { var h = TextChunk; if (h != null) h(id, text); });
                    }
                    else if (response.EventCase == AskResponse.EventOneofCase.Completion
                             && response.Completion.SequenceIndex == 0)
                    {
                        var completion = response.Completion;
                        lock (gate) log.Record(turn.Text, completion.Text);
                        Raise(() => { var h = ResponseComplete; if (h != null) h(id, completion); });
                    }
                }
            }
        }

        /// <summary>Stops the reply in flight (its call is cancelled; the server frees the slot).</summary>
        public Task InterruptAsync()
        {
            lock (gate) if (inFlight != null) inFlight.Cancel();
            return Task.FromResult(0);
        }

        /// <summary>Kept and sent with the next turn.</summary>
        public Task UpdateSceneAsync(SceneFeatures update)
        {
            lock (gate) { scene = update; sceneChanged = true; }
            return Task.FromResult(0);
        }

        public void Dispose()
        {
            if (!lifetime.IsCancellationRequested) lifetime.Cancel();
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
