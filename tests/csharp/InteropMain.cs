// TESTS ONLY. Runs the Unity package's plain C# layer under mono:
//   interop.exe describe URL REQUEST.json  stream a caption over gRPC-Web, one line per event
//   interop.exe cancel URL REQUEST.json    cancel after the first chunk
//   interop.exe unit                       DialogueSession against a scripted server
// Driven by tests/test_unity_client.py.
using System;
using System.Collections.Concurrent;
using System.Collections.Generic;
using System.Diagnostics;
using System.IO;
using System.Threading;
using System.Threading.Tasks;
using ArBridge.Client;
using ArBridge.V1;
using Google.Protobuf;
using Grpc.Core;

namespace ArBridge.Tests
{
    public static class InteropMain
    {
        public static int Main(string[] args)
        {
            try
            {
                switch (args[0])
                {
                    case "describe": return Describe(args[1], args[2]).GetAwaiter().GetResult();
                    case "cancel": return Cancel(args[1], args[2]).GetAwaiter().GetResult();
                    case "ask": return Ask(args[1]).GetAwaiter().GetResult();
                    case "ask-one": return AskOne(args[1]).GetAwaiter().GetResult();
                    case "act": return Act(args[1]).GetAwaiter().GetResult();
                    case "unit": return DialogueTests.Run().GetAwaiter().GetResult();
                }
                Console.Error.WriteLine("unknown mode " + args[0]);
                return 2;
            }
            catch (RpcException e)
            {
                Console.WriteLine("ERROR " + (int)e.StatusCode + " " + e.Status.Detail);
                return 1;
            }
        }

        static DescribeSceneRequest Request(string path)
        {
            return JsonParser.Default.Parse<DescribeSceneRequest>(File.ReadAllText(path));
        }

        static async Task<int> Describe(string url, string requestPath)
        {
            var client = new ArBridgeClient(new GrpcWebCallInvoker(url),
                new ArBridgeClientOptions { BearerToken = Environment.GetEnvironmentVariable("ARBRIDGE_TOKEN") });
            var clock = Stopwatch.StartNew();
            var completion = await client.DescribeSceneAsync(Request(requestPath), chunk =>
                Console.WriteLine(clock.ElapsedMilliseconds + " chunk " + JsonFormatter.Default.Format(chunk)));
            Console.WriteLine(clock.ElapsedMilliseconds + " completion " + JsonFormatter.Default.Format(completion));
            return 0;
        }

        // Dialogue over gRPC-Web: AskDialogue resumes a session the server does not
        // know (NOT_FOUND), so it starts a new one, then carries it to a second turn.
        static async Task<int> Ask(string url)
        {
            var client = new ArBridgeClient(new GrpcWebCallInvoker(url));
            var dialogue = client.StartAskDialogue(new ConverseStart(), resumeSessionId: "forgotten-session");
            var lines = new List<string>();
            dialogue.TextChunk += (id, text) => lines.Add("chunk " + id);
            dialogue.ResponseComplete += (id, c) =>
                lines.Add("completion " + id + " " + dialogue.SessionId + " " + JsonFormatter.Default.Format(c));
            dialogue.Error += (id, e) => lines.Add("error " + id + " " + e.Message);
            var sampling = new SamplingParams { MaxNewTokens = 4 };
            await dialogue.AskAsync("hello", null, sampling);
            await dialogue.AskAsync("and then?", null, sampling);

            // Interrupt: the reply in flight completes as CANCELLED with what was heard.
            var firstChunk = new TaskCompletionSource<bool>();
            dialogue.TextChunk += (id, text) => { if (id == 3) firstChunk.TrySetResult(true); };
            var longTurn = dialogue.AskAsync("tell me a long story", null, new SamplingParams { MaxNewTokens = 60 });
            await firstChunk.Task;
            await dialogue.InterruptAsync();
            await longTurn;

            // Two turns before the first reply: one session, not two.
            var fresh = client.StartAskDialogue(new ConverseStart());
            var sessions = new List<string>();
            fresh.ResponseComplete += (id, c) => { lock (sessions) sessions.Add(fresh.SessionId); };
            var a = fresh.AskAsync("one", null, sampling);
            var b = fresh.AskAsync("two", null, sampling);
            await Task.WhenAll(a, b);
            lines.Add("fresh sessions " + new HashSet<string>(sessions).Count + " completions " + sessions.Count);
            foreach (var line in lines) Console.WriteLine(line);
            return 0;
        }

        // One dialogue turn, each event printed as it comes (a test cuts the network under it).
        static async Task<int> AskOne(string url)
        {
            var client = new ArBridgeClient(new GrpcWebCallInvoker(url));
            var dialogue = client.StartAskDialogue(new ConverseStart());
            dialogue.TextChunk += (id, text) => Console.WriteLine("chunk " + JsonFormatter.ToDiagnosticString(
                new TokenChunk { Text = text }));
            dialogue.ResponseComplete += (id, c) => Console.WriteLine("completion " + JsonFormatter.Default.Format(c));
            dialogue.Error += (id, e) => Console.WriteLine("error " + e.Message);
            await dialogue.AskAsync("tell me about the room", null, new SamplingParams { MaxNewTokens = 24 });
            return 0;
        }

        // Scene actions over gRPC-Web: each call raised as ActionCalled, typed, before the
        // reply completes; a pointing ray goes with the turn.
        static async Task<int> Act(string url)
        {
            var client = new ArBridgeClient(new GrpcWebCallInvoker(url));
            var scene = new SceneFeatures { CameraPose = new Pose { Rotation = new Quaternion { W = 1 } } };
            scene.Objects.Add(new SceneObject { Id = "c1", Label = "chair",
                Pose = new Pose { Position = new Vec3 { X = -1, Z = 2 } }, Extents = new Vec3 { X = 0.3f, Y = 0.3f, Z = 0.3f } });
            scene.Objects.Add(new SceneObject { Id = "l1", Label = "lamp",
                Pose = new Pose { Position = new Vec3 { X = 1, Z = 2 } }, Extents = new Vec3 { X = 0.3f, Y = 0.3f, Z = 0.3f } });
            var start = new ConverseStart { Scene = scene, ActionMode = ActionMode.Required };
            var highlight = new ActionDefinition { Name = "highlight", Description = "make an object glow" };
            highlight.Parameters.Add(new ActionParameter { Name = "target", Type = ParameterType.Object });
            start.Actions.Add(highlight);
            var dialogue = client.StartAskDialogue(start);
            dialogue.ActionCalled += (id, call) =>
                Console.WriteLine("action " + id + " " + call.Name + " " + call.ObjectId("target"));
            dialogue.ResponseComplete += (id, c) => Console.WriteLine("completion " + JsonFormatter.Default.Format(c));
            dialogue.Error += (id, e) => Console.WriteLine("error " + e.Message);
            var pointing = new Ray { Source = RaySource.RightHand, Origin = new Vec3(),
                                     Direction = new Vec3 { X = 1, Z = 2 } };
            await dialogue.AskAsync("highlight this", null,
                new SamplingParams { MaxNewTokens = 24, Temperature = 1.5f, Seed = 3 }, new[] { pointing });
            return 0;
        }

        static async Task<int> Cancel(string url, string requestPath)
        {
            var client = new ArBridgeClient(new GrpcWebCallInvoker(url));
            var cts = new CancellationTokenSource();
            int chunks = 0;
            try
            {
                await client.DescribeSceneAsync(Request(requestPath), chunk =>
                {
                    chunks++;
                    cts.Cancel();
                }, cts.Token);
                Console.WriteLine("not cancelled");
                return 1;
            }
            catch (OperationCanceledException)
            {
                Console.WriteLine("cancelled after " + chunks + " chunk(s)");
                return 0;
            }
        }
    }

    /// <summary>DialogueSession: events, history resent on reconnect, giving up.</summary>
    static class DialogueTests
    {
        static void Check(bool condition, string what)
        {
            if (!condition) throw new Exception("FAILED: " + what);
        }

        static async Task WaitFor(Func<bool> condition, string what)
        {
            for (int i = 0; i < 500 && !condition(); i++) await Task.Delay(10);
            Check(condition(), what);
        }

        public static async Task<int> Run()
        {
            var server = new ScriptedInvoker();
            var client = new ArBridgeClient(server);
            var chunks = new List<string>();
            var completions = new List<uint>();
            var errors = new List<KeyValuePair<uint, Exception>>();
            var reconnects = new List<int>();
            var session = client.StartDialogue(new ConverseStart { SystemPrompt = "be brief" },
                new ReconnectPolicy(seed: 1) { InitialDelay = TimeSpan.FromMilliseconds(20), MaxAttempts = 3 });
            session.TextChunk += (id, text) => { lock (chunks) chunks.Add(id + ":" + text); };
            session.ResponseComplete += (id, c) => { lock (completions) completions.Add(id); };
            session.Error += (id, e) => { lock (errors) errors.Add(new KeyValuePair<uint, Exception>(id, e)); };
            session.Reconnecting += (attempt, delay) => { lock (reconnects) reconnects.Add(attempt); };

            await session.StartAsync();
            var first = server.Calls[0];
            Check(first.Sent[0].Start.SystemPrompt == "be brief" && first.Sent[0].Start.History.Count == 0, "start sent");

            uint one = await session.AskAsync("hello", new SceneFeatures { LocationHint = "kitchen" });
            Check(one == 1, "turn ids start at 1");
            Check(first.Sent[1].SceneUpdate.LocationHint == "kitchen" && first.Sent[2].UserTurn.Text == "hello", "scene then turn");
            first.Reply(new ConverseResponse { TurnId = 1, Chunk = new TokenChunk { Text = "Hi" } });
            first.Reply(new ConverseResponse { TurnId = 1, Completion = new Completion { Text = "Hi there" } });
            await WaitFor(() => completions.Contains(1), "turn 1 completes");
            Check(chunks[0] == "1:Hi", "chunk event");

            uint two = await session.AskAsync("and now?");
            first.Reply(new ConverseResponse { TurnId = 2, Chunk = new TokenChunk { Text = "Par" } });
            first.Fail(new RpcException(new Status(StatusCode.Unavailable, "wifi handover")));
            await WaitFor(() => server.Calls.Count == 2 && server.Calls[1].Sent.Count == 1, "reopened");
            Check(reconnects.Count == 1 && reconnects[0] == 1, "one reconnect event");
            Check(errors.Count == 1 && errors[0].Key == two, "the reply in flight failed");
            var reopened = server.Calls[1].Sent[0].Start;
            Check(reopened.SystemPrompt == "be brief", "system prompt resent");
            Check(reopened.History.Count == 2 && reopened.History[0].Text == "hello"
                  && reopened.History[1].Role == Role.Assistant && reopened.History[1].Text == "Hi there", "history resent");
            Check(reopened.Scene.LocationHint == "kitchen", "latest scene resent");

            uint three = await session.AskAsync("third");
            Check(three == 3 && server.Calls[1].Sent[1].UserTurn.TurnId == 3, "ids continue across reconnects");
            server.Calls[1].Reply(new ConverseResponse { TurnId = 3, Completion = new Completion { Text = "ok" } });
            await WaitFor(() => completions.Contains(3), "turn 3 completes");

            await session.InterruptAsync();
            Check(server.Calls[1].Sent[2].EventCase == ConverseRequest.EventOneofCase.Cancel, "interrupt sent");

            // What the server meant (not a transport failure) ends the session.
            server.Calls[1].Fail(new RpcException(new Status(StatusCode.InvalidArgument, "user_turn.text: too long")));
            await session.Closed;
            Check(!session.IsOpen && server.Calls.Count == 2, "no reconnect after INVALID_ARGUMENT");
            Check(errors.Count == 2 && errors[1].Key == 0
                  && ((RpcException)errors[1].Value).StatusCode == StatusCode.InvalidArgument, "session error");
            session.Dispose();

            // A server that shuts down cancels open streams: reconnect, and resend
            // only the most recent MaxHistoryTurns turns.
            var server2 = new ScriptedInvoker();
            var session2 = new ArBridgeClient(server2).StartDialogue(new ConverseStart(),
                new ReconnectPolicy(seed: 2) { InitialDelay = TimeSpan.FromMilliseconds(10) });
            session2.MaxHistoryTurns = 2;
            int reconnects2 = 0;
            var done2 = new List<uint>();
            session2.Reconnecting += (attempt, delay) => reconnects2++;
            session2.ResponseComplete += (id, c) => { lock (done2) done2.Add(id); };
            await session2.StartAsync();
            foreach (var pair in new[] { new[] { "a", "A" }, new[] { "b", "B" } })
            {
                uint id = await session2.AskAsync(pair[0]);
                server2.Calls[0].Reply(new ConverseResponse { TurnId = id, Completion = new Completion { Text = pair[1] } });
                await WaitFor(() => { lock (done2) return done2.Contains(id); }, "reply " + pair[1]);
            }
            server2.Calls[0].Fail(new RpcException(new Status(StatusCode.Cancelled, "server shutting down")));
            await WaitFor(() => server2.Calls.Count == 2 && server2.Calls[1].Sent.Count == 1, "reopened after CANCELLED");
            var history2 = server2.Calls[1].Sent[0].Start.History;
            Check(reconnects2 == 1, "one reconnect");
            Check(history2.Count == 2 && history2[0].Text == "b" && history2[1].Text == "B", "history capped to the newest turns");
            session2.Dispose();

            await DefectTests();
            await ResumeTests();
            Console.WriteLine("unit ok");
            return 0;
        }

        static async Task<Exception> Throws(Func<Task> action)
        {
            try { await action(); }
            catch (Exception e) { return e; }
            return null;
        }

        // The runtime defects of issue #16, each failing on the code before the fix.
        // The reply streaming when the connection breaks is resumed from its last seq
        // (a duplicate replayed by the server is not shown twice), its turn does not fail.
        static async Task ResumeTests()
        {
            var server = new ScriptedInvoker();
            var client = new ArBridgeClient(server, new ArBridgeClientOptions
            {
                Resume = new ReconnectPolicy(seed: 3) { InitialDelay = TimeSpan.FromMilliseconds(10) },
            });
            var chunks = new List<string>();
            var completions = new List<string>();
            var errors = new List<uint>();
            var session = client.StartDialogue(new ConverseStart(),
                new ReconnectPolicy(seed: 4) { InitialDelay = TimeSpan.FromMilliseconds(10) });
            session.TextChunk += (id, text) => { lock (chunks) chunks.Add(id + ":" + text); };
            session.ResponseComplete += (id, c) => { lock (completions) completions.Add(id + ":" + c.Text); };
            session.Error += (id, e) => { lock (errors) errors.Add(id); };
            await session.StartAsync();
            var first = server.Calls[0];
            Check(first.Sent[0].Start.Stream.Resumable, "replies asked for as resumable");
            await session.AskAsync("hello");
            first.Reply(new ConverseResponse { TurnId = 1, Seq = 1, StreamId = "s-1", Chunk = new TokenChunk { Text = "Hel" } });
            first.Reply(new ConverseResponse { TurnId = 1, Seq = 2, Chunk = new TokenChunk { Text = "lo" } });
            server.ResumeScript.Add(new ResumeResponse { Seq = 2, StreamId = "s-1", TurnId = 1, Chunk = new TokenChunk { Text = "lo" } });
            server.ResumeScript.Add(new ResumeResponse { Seq = 3, TurnId = 1, Chunk = new TokenChunk { Text = " you" } });
            server.ResumeScript.Add(new ResumeResponse { Seq = 4, TurnId = 1, Completion = new Completion { Text = "Hello you" } });
            await WaitFor(() => { lock (chunks) return chunks.Count == 2; }, "two chunks before the break");
            first.Fail(new RpcException(new Status(StatusCode.Unavailable, "wifi handover")));
            await WaitFor(() => { lock (completions) return completions.Count == 1; }, "resumed reply completes");
            Check(server.Resumes.Count == 1 && server.Resumes[0].StreamId == "s-1" && server.Resumes[0].AfterSeq == 2,
                  "resumed after the last seq received");
            Check(string.Join("|", chunks) == "1:Hel|1:lo|1: you", "each chunk once: " + string.Join("|", chunks));
            Check(completions[0] == "1:Hello you" && errors.Count == 0, "the turn completes, no error");
            await WaitFor(() => server.Calls.Count == 2, "the stream reopened beside it");
            session.Dispose();
        }

        static async Task DefectTests()
        {
            // AskAsync before StartAsync: a clear InvalidOperationException, not a NullReferenceException.
            var early = new ArBridgeClient(new ScriptedInvoker()).StartDialogue(new ConverseStart());
            var thrown = await Throws(() => early.AskAsync("too soon"));
            Check(thrown is InvalidOperationException && thrown.Message.Contains("StartAsync"),
                  "AskAsync before StartAsync: " + thrown);
            early.Dispose();
            Check(await Throws(() => early.AskAsync("after dispose")) is ObjectDisposedException,
                  "AskAsync after Dispose: ObjectDisposedException");

            // The channel is disposed while the session reconnects (an endpoint swapped its
            // address): the reopen throws ObjectDisposedException. The session must end with
            // an Error event, not a silently faulted read loop.
            var server = new ScriptedInvoker();
            var session = new ArBridgeClient(server).StartDialogue(new ConverseStart(),
                new ReconnectPolicy(seed: 3) { InitialDelay = TimeSpan.FromMilliseconds(10) });
            var errors = new List<Exception>();
            session.Error += (id, e) => { lock (errors) errors.Add(e); };
            await session.StartAsync();
            server.OpenFails = () => new ObjectDisposedException("GrpcChannel");
            server.Calls[0].Fail(new RpcException(new Status(StatusCode.Unavailable, "connection reset")));
            var closed = await Task.WhenAny(session.Closed, Task.Delay(5000));
            Check(closed == session.Closed, "the session ends");
            Check(!session.Closed.IsFaulted, "the read loop does not fault: " + session.Closed.Exception);
            await WaitFor(() => { lock (errors) return errors.Exists(e => e is ObjectDisposedException); },
                          "an Error event carries the ObjectDisposedException");
            Check(!session.IsOpen, "closed after the failed reopen");

            // Dispose releases the session's CancellationTokenSource once its loop is done.
            session.Dispose();
            await session.Closed;
            await Task.Delay(50);
            var field = typeof(DialogueSession).GetField("lifetime",
                System.Reflection.BindingFlags.NonPublic | System.Reflection.BindingFlags.Instance);
            var cts = (CancellationTokenSource)field.GetValue(session);
            Check(await Throws(() => { var unused = cts.Token; return Task.FromResult(0); })
                  is ObjectDisposedException, "the session's CancellationTokenSource is disposed");

            var ask = new AskDialogue(() => new ArBridgeClient(new ScriptedInvoker()), new ConverseStart());
            ask.Dispose();
            var askCts = (CancellationTokenSource)typeof(AskDialogue).GetField("lifetime",
                System.Reflection.BindingFlags.NonPublic | System.Reflection.BindingFlags.Instance).GetValue(ask);
            Check(await Throws(() => { var unused = askCts.Token; return Task.FromResult(0); })
                  is ObjectDisposedException, "AskDialogue's CancellationTokenSource is disposed");
            Check(await Throws(() => ask.AskAsync("after dispose")) is ObjectDisposedException,
                  "AskDialogue.AskAsync after Dispose: ObjectDisposedException");
        }
    }

    /// <summary>A CallInvoker whose Converse calls the test scripts by hand.</summary>
    sealed class ScriptedInvoker : CallInvoker
    {
        public readonly List<ScriptedDuplex> Calls = new List<ScriptedDuplex>();
        /// <summary>When set, opening a stream throws what it returns (a disposed channel).</summary>
        public Func<Exception> OpenFails;

        public override AsyncDuplexStreamingCall<TRequest, TResponse> AsyncDuplexStreamingCall<TRequest, TResponse>(
            Method<TRequest, TResponse> method, string host, CallOptions options)
        {
            if (OpenFails != null) throw OpenFails();
            var call = new ScriptedDuplex();
            lock (Calls) Calls.Add(call);
            return new AsyncDuplexStreamingCall<TRequest, TResponse>(
                (IClientStreamWriter<TRequest>)(object)call, (IAsyncStreamReader<TResponse>)(object)call,
                Task.FromResult(new Metadata()), () => Status.DefaultSuccess, () => new Metadata(), call.Dispose);
        }

        public override TResponse BlockingUnaryCall<TRequest, TResponse>(Method<TRequest, TResponse> m, string h, CallOptions o, TRequest r) { throw new NotSupportedException(); }
        public override AsyncUnaryCall<TResponse> AsyncUnaryCall<TRequest, TResponse>(Method<TRequest, TResponse> m, string h, CallOptions o, TRequest r) { throw new NotSupportedException(); }
        public readonly List<ResumeRequest> Resumes = new List<ResumeRequest>();
        public readonly List<ResumeResponse> ResumeScript = new List<ResumeResponse>();

        public override AsyncServerStreamingCall<TResponse> AsyncServerStreamingCall<TRequest, TResponse>(Method<TRequest, TResponse> m, string h, CallOptions o, TRequest r)
        {
            if (!m.FullName.EndsWith("/Resume")) throw new NotSupportedException();
            lock (Resumes) Resumes.Add((ResumeRequest)(object)r);
            var reader = new ListReader<ResumeResponse>(new List<ResumeResponse>(ResumeScript));
            return new AsyncServerStreamingCall<TResponse>((IAsyncStreamReader<TResponse>)(object)reader,
                Task.FromResult(new Metadata()), () => Status.DefaultSuccess, () => new Metadata(), () => { });
        }
        public override AsyncClientStreamingCall<TRequest, TResponse> AsyncClientStreamingCall<TRequest, TResponse>(Method<TRequest, TResponse> m, string h, CallOptions o) { throw new NotSupportedException(); }
    }

    sealed class ListReader<T> : IAsyncStreamReader<T>
    {
        readonly List<T> items;
        int next;
        public ListReader(List<T> items) { this.items = items; }
        public T Current { get; private set; }
        public Task<bool> MoveNext(CancellationToken cancellationToken)
        {
            if (next >= items.Count) return Task.FromResult(false);
            Current = items[next++];
            return Task.FromResult(true);
        }
    }

    sealed class ScriptedDuplex : IClientStreamWriter<ConverseRequest>, IAsyncStreamReader<ConverseResponse>
    {
        public readonly List<ConverseRequest> Sent = new List<ConverseRequest>();
        readonly BlockingCollection<Func<ConverseResponse>> replies = new BlockingCollection<Func<ConverseResponse>>();

        public void Reply(ConverseResponse response) { replies.Add(() => response); }
        public void Fail(RpcException error) { replies.Add(() => { throw error; }); }
        public void Dispose() { replies.Add(() => { throw new RpcException(new Status(StatusCode.Cancelled, "disposed")); }); }

        public WriteOptions WriteOptions { get; set; }
        public Task WriteAsync(ConverseRequest message) { lock (Sent) Sent.Add(message); return Task.FromResult(0); }
        public Task CompleteAsync() { return Task.FromResult(0); }

        public ConverseResponse Current { get; private set; }
        public Task<bool> MoveNext(CancellationToken cancellationToken)
        {
            return Task.Run(() =>
            {
                Current = replies.Take(cancellationToken)();
                return true;
            });
        }
    }
}
