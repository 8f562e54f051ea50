// TESTS ONLY. Drives the package's Unity-side assemblies, built one per asmdef against the
// stand-ins (tests/unity_build.py), through the lifecycle Unity gives them. Each check is a
// defect that shipped before: it fails on the old code.
//   mono UnityLayerTests.exe desktop|webgl|webgl65|editor
using System;
using System.Collections.Generic;
using System.IO;
using System.Net;
using System.Net.Http;
using System.Reflection;
using System.Threading;
using System.Threading.Tasks;
using ArBridge.Unity;
using ArBridge.V1;
using Grpc.Core;
using Grpc.Net.Client.Web;

static class UnityLayerTests
{
    static int failures;

    static void Check(bool ok, string what)
    {
        if (!ok) { failures++; Console.WriteLine("FAILED: " + what); }
    }

    static Exception Throws(Action action)
    {
        try { action(); } catch (Exception e) { return e; }
        return null;
    }

    static void Call(object component, string method)
    {
        component.GetType().GetMethod(method, BindingFlags.Instance | BindingFlags.NonPublic | BindingFlags.Public)
            .Invoke(component, null);
    }

    static int Main(string[] args)
    {
        string kind = args[0];
        if (kind == "editor")
        {
            Linker();
            // The Editor with WebGL as build target: gRPC-Web in Play mode, but not a browser.
            Check(ArBridgeChannels.DefaultForThisPlatform == ArBridgeTransport.GrpcWeb
                  && !ArBridgeChannels.RunsInBrowser, "WebGL target in the Editor uses gRPC-Web");
        }
        else
        {
            Handlers(kind);
            Timeouts(kind);
            AgentLifecycle().Wait();
            StreamerLifecycle().Wait();
            if (kind != "desktop") ThreadPoolPump();
        }
        Console.WriteLine(failures == 0 ? "unity layer ok" : failures + " failure(s)");
        return failures == 0 ? 0 : 1;
    }

    // -- transports ----------------------------------------------------------------------
    sealed class AppHandler : HttpMessageHandler
    {
        public bool Disposed;
        public int Sent;
        protected override Task<HttpResponseMessage> SendAsync(HttpRequestMessage request, CancellationToken token)
        {
            if (Disposed) throw new ObjectDisposedException("AppHandler");
            Sent++;
            return Task.FromResult(new HttpResponseMessage(HttpStatusCode.OK));
        }
        protected override void Dispose(bool disposing) { Disposed = true; }
    }

    static void Handlers(string kind)
    {
        bool browser = kind != "desktop";
        Check(ArBridgeChannels.RunsInBrowser == browser, "RunsInBrowser in " + kind);
        Check(ArBridgeChannels.DefaultForThisPlatform == (browser ? ArBridgeTransport.GrpcWeb : ArBridgeTransport.Http2),
              "default transport in " + kind);
        // The app's inner handler stays the app's: a channel made with it, then disposed (the
        // endpoint swaps address or transport), must leave it usable for the next channel.
        var inner = new AppHandler();
        var first = ArBridgeChannels.Create("http://127.0.0.1:8080", ArBridgeTransport.GrpcWeb, null, inner);
        first.Dispose();
        Check(!inner.Disposed, "disposing a channel disposed the app's gRPC-Web inner handler");
        var handler = ArBridgeChannels.CreateHandler("http://127.0.0.1:8080", ArBridgeTransport.GrpcWeb, null, inner);
        var request = new HttpRequestMessage(HttpMethod.Post, "http://127.0.0.1:8080/x");
        var sent = Throws(() => new HttpMessageInvoker(handler, false).SendAsync(request, CancellationToken.None).Wait());
        Check(sent == null && inner.Sent == 1, "the reused inner handler carries a request: " + sent);

        var web = (GrpcWebHandler)handler;
        Check(web.GrpcWebMode == (browser ? GrpcWebMode.GrpcWebText : GrpcWebMode.GrpcWeb),
              "gRPC-Web mode in " + kind + ": " + web.GrpcWebMode + " (browsers need GrpcWebText to stream)");

        if (kind == "webgl")
        {
            var noInner = Throws(() => ArBridgeChannels.CreateHandler("http://h:1", ArBridgeTransport.GrpcWeb));
            Check(noInner is PlatformNotSupportedException && noInner.Message.Contains("grpcWebInnerHandler"),
                  "WebGL before 6.5 without an inner handler says what to do: " + noInner);
        }
        if (kind == "webgl65")
        {
            var made = (GrpcWebHandler)ArBridgeChannels.CreateHandler("http://h:1", ArBridgeTransport.GrpcWeb);
            Check(made.InnerHandler != null && made.InnerHandler.GetType().Name == "UnityHttpMessageHandler",
                  "Unity 6.5 WebGL uses UnityHttpMessageHandler");
        }
        if (browser)
        {
            var http2 = Throws(() => ArBridgeChannels.CreateHandler("http://h:1", ArBridgeTransport.Http2));
            Check(http2 is PlatformNotSupportedException, "HTTP/2 in a browser is refused plainly: " + http2);
        }
    }

    static void Timeouts(string kind)
    {
        var endpoint = new ArBridgeEndpoint();
        var timeout = endpoint.EffectiveCallTimeout;
        if (kind == "desktop") Check(timeout == TimeSpan.FromSeconds(60), "60 s deadline on desktop");
        else Check(timeout == null, "no deadline in a WebGL player (timers need threads): " + timeout);
    }

    // -- components ----------------------------------------------------------------------
    sealed class Invoker : CallInvoker
    {
        public readonly List<Duplex> Calls = new List<Duplex>();
        public bool BlockStart;
        public readonly List<CancellationToken> StreamTokens = new List<CancellationToken>();

        public override AsyncDuplexStreamingCall<TRequest, TResponse> AsyncDuplexStreamingCall<TRequest, TResponse>(
            Method<TRequest, TResponse> method, string host, CallOptions options)
        {
            var call = new Duplex(BlockStart);
            lock (Calls) Calls.Add(call);
            return new AsyncDuplexStreamingCall<TRequest, TResponse>(
                (IClientStreamWriter<TRequest>)(object)call, (IAsyncStreamReader<TResponse>)(object)call,
                Task.FromResult(new Metadata()), () => Status.DefaultSuccess, () => new Metadata(), call.Dispose);
        }

        // DescribeScene: a stream that sends nothing until its call is cancelled.
        public override AsyncServerStreamingCall<TResponse> AsyncServerStreamingCall<TRequest, TResponse>(
            Method<TRequest, TResponse> method, string host, CallOptions options, TRequest request)
        {
            lock (StreamTokens) StreamTokens.Add(options.CancellationToken);
            var reader = new Silent<TResponse>(options.CancellationToken);
            return new AsyncServerStreamingCall<TResponse>(reader, Task.FromResult(new Metadata()),
                () => Status.DefaultSuccess, () => new Metadata(), () => { });
        }

        public override TResponse BlockingUnaryCall<TRequest, TResponse>(Method<TRequest, TResponse> m, string h, CallOptions o, TRequest r) { throw new NotSupportedException(); }
        public override AsyncUnaryCall<TResponse> AsyncUnaryCall<TRequest, TResponse>(Method<TRequest, TResponse> m, string h, CallOptions o, TRequest r) { throw new NotSupportedException(); }
        public override AsyncClientStreamingCall<TRequest, TResponse> AsyncClientStreamingCall<TRequest, TResponse>(Method<TRequest, TResponse> m, string h, CallOptions o) { throw new NotSupportedException(); }
    }

    sealed class Silent<T> : IAsyncStreamReader<T>
    {
        readonly CancellationToken callToken;
        public Silent(CancellationToken callToken) { this.callToken = callToken; }
        public T Current { get { return default(T); } }
        public async Task<bool> MoveNext(CancellationToken token)
        {
            try { await Task.Delay(Timeout.Infinite, CancellationTokenSource.CreateLinkedTokenSource(token, callToken).Token); }
            catch (OperationCanceledException) { throw new RpcException(new Status(StatusCode.Cancelled, "Call canceled by the client.")); }
            return false;
        }
    }

    sealed class Duplex : IClientStreamWriter<ConverseRequest>, IAsyncStreamReader<ConverseResponse>
    {
        readonly TaskCompletionSource<bool> released = new TaskCompletionSource<bool>();
        readonly TaskCompletionSource<bool> ended = new TaskCompletionSource<bool>();
        readonly bool blockFirstWrite;
        int writes;
        public bool Disposed;
        public Duplex(bool blockFirstWrite) { this.blockFirstWrite = blockFirstWrite; }
        public WriteOptions WriteOptions { get; set; }
        public Task WriteAsync(ConverseRequest message)
        {
            if (Disposed) throw new RpcException(new Status(StatusCode.Cancelled, "Call canceled by the client."));
            if (blockFirstWrite && writes++ == 0) return released.Task;
            return Task.FromResult(0);
        }
        public Task CompleteAsync() { return Task.FromResult(0); }
        public ConverseResponse Current { get { return null; } }
        public async Task<bool> MoveNext(CancellationToken token)
        {
            await ended.Task;
            throw new RpcException(new Status(StatusCode.Cancelled, "Call canceled by the client."));
        }
        public void Dispose()
        {
            Disposed = true;
            released.TrySetException(new RpcException(new Status(StatusCode.Cancelled, "Call canceled by the client.")));
            ended.TrySetResult(true);
        }
    }

    static ArBridgeEndpoint Endpoint(Invoker invoker)
    {
        return new ArBridgeEndpoint { callInvoker = invoker, automaticTransport = false, transport = ArBridgeTransport.Http2 };
    }

    static async Task AgentLifecycle()
    {
        // Destroyed while its dialogue is still opening: no error for the user to see.
        var slow = new Invoker { BlockStart = true };
        var agent = new DialogueAgent { endpoint = Endpoint(slow) };
        var errors = new List<string>();
        agent.onError.AddListener(e => { lock (errors) errors.Add(e); });
        agent.Ask("hello");
        await Task.Delay(50);
        Check(slow.Calls.Count == 1, "the dialogue stream opened");
        Call(agent, "OnDestroy");
        await Task.Delay(200);
        Check(errors.Count == 0, "destroying the agent reported an error: " + string.Join(" | ", errors));

        // Disabled: its stream is closed (no dialogue left open behind a disabled component).
        var fast = new Invoker();
        var agent2 = new DialogueAgent { endpoint = Endpoint(fast) };
        var errors2 = new List<string>();
        agent2.onError.AddListener(e => { lock (errors2) errors2.Add(e); });
        await agent2.AskAsync("hi");
        Check(fast.Calls.Count == 1 && !fast.Calls[0].Disposed, "dialogue open while enabled");
        Call(agent2, "OnDisable");
        Check(fast.Calls[0].Disposed, "OnDisable closes the dialogue stream");
        await Task.Delay(100);
        Check(errors2.Count == 0, "closing on disable reported: " + string.Join(" | ", errors2));
        await agent2.AskAsync("again");
        Check(fast.Calls.Count == 2, "the next Ask opens a new dialogue");
        Call(agent2, "OnDestroy");
        agent2.Ask("a late speech callback");
        await Task.Delay(50);
        Check(fast.Calls.Count == 2, "a destroyed agent opens no new dialogue");
        Check(errors2.Count == 0, "nor reports one: " + string.Join(" | ", errors2));

        var endpoint = Endpoint(fast);
        Call(endpoint, "OnDestroy");
        Check(Throws(() => { var c = endpoint.Client; }) is ObjectDisposedException,
              "a destroyed endpoint makes no new channel");
    }

    static async Task StreamerLifecycle()
    {
        var invoker = new Invoker();
        var streamer = new CaptionStreamer { endpoint = Endpoint(invoker) };
        var errors = new List<string>();
        streamer.onError.AddListener(e => { lock (errors) errors.Add(e); });
        streamer.Describe(new SceneFeatures());
        await Task.Delay(50);
        Check(invoker.StreamTokens.Count == 1 && !invoker.StreamTokens[0].IsCancellationRequested, "caption streaming");
        Call(streamer, "OnDisable");
        await Task.Delay(100);
        Check(invoker.StreamTokens[0].IsCancellationRequested, "OnDisable cancels the caption in flight");
        Check(errors.Count == 0, "a cancelled caption is not an error: " + string.Join(" | ", errors));
        Call(streamer, "OnDestroy");
        var field = typeof(CaptionStreamer).GetField("lifetime", BindingFlags.Instance | BindingFlags.NonPublic);
        var cts = (CancellationTokenSource)field.GetValue(streamer);
        Check(Throws(() => { var unused = cts.Token; }) is ObjectDisposedException, "OnDestroy disposes its token source");
        Check(Throws(() => streamer.Describe(new SceneFeatures())) == null, "Describe after destroy is a no-op");
    }

    // In a WebGL player the package hooks a thread-pool pump into the Update phase.
    static void ThreadPoolPump()
    {
        var pump = Type.GetType("ArBridge.Unity.WebGLThreadPoolPump, ArBridge.Client.Unity");
        Check(pump != null, "WebGL builds carry the thread-pool pump");
        if (pump == null) return;
        pump.GetMethod("Install", BindingFlags.Static | BindingFlags.NonPublic).Invoke(null, null);
        var update = UnityEngine.LowLevel.PlayerLoop.GetCurrentPlayerLoop().subSystemList[0];
        Check(update.subSystemList.Length == 1 && update.subSystemList[0].updateDelegate != null,
              "the pump runs in the Update phase");
        var ran = new ManualResetEventSlim();
        ThreadPool.QueueUserWorkItem(_ => ran.Set());
        for (int frame = 0; frame < 50 && !ran.IsSet; frame++) update.subSystemList[0].updateDelegate();
        Check(Throws(() => update.subSystemList[0].updateDelegate()) == null, "a frame's pump does not throw");
    }

    // -- editor -------------------------------------------------------------------------
    static void Linker()
    {
#if UNITY_EDITOR
        var type = Type.GetType("ArBridge.Editor.ArBridgeLinkerProcessor, ArBridge.Client.Editor");
        var processor = (UnityEditor.Build.IUnityLinkerProcessor)Activator.CreateInstance(type, true);
        Directory.CreateDirectory(Path.Combine("..", "Temp"));
        string path = processor.GenerateAdditionalLinkXmlFile(null, null);
        string xml = File.ReadAllText(path);
        foreach (var name in new[] { "Google.Protobuf", "Grpc.Core.Api", "Grpc.Net.Client", "Grpc.Net.Client.Web" })
            Check(xml.Contains("fullname=\"" + name + "\" preserve=\"all\" ignoreIfMissing=\"1\""),
                  "link.xml preserves " + name + " with ignoreIfMissing");
        Check(xml.Contains("<type fullname=\"System.Threading._ThreadPoolWaitCallback\" preserve=\"all\"/>"),
              "link.xml keeps what the WebGL pump reaches by reflection");
#else
        Check(false, "the linker test runs in an editor build");
#endif
    }
}
