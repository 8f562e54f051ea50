// A WebGL player has no worker threads, so work queued on the .NET thread pool never runs
// there. grpc-dotnet awaits with ConfigureAwait(false), which puts continuations on that
// pool, and a call hangs mid-stream. (Cysharp's GrpcWebSocketBridge documents the problem
// and the fix.) This hook runs the pool's queued work on the main thread, once per frame,
// from Unity's player loop. It is installed by itself in WebGL players only.
#if UNITY_WEBGL && !UNITY_EDITOR
using System;
using System.Reflection;
using UnityEngine;
using UnityEngine.LowLevel;

namespace ArBridge.Unity
{
    static class WebGLThreadPoolPump
    {
        struct RunThreadPoolWork { }

        static Func<bool> runQueuedWork;

        [RuntimeInitializeOnLoadMethod(RuntimeInitializeLoadType.BeforeSceneLoad)]
        static void Install()
        {
            // The runtime's own "run queued work items" entry point (Mono's class library).
            var queue = Type.GetType("System.Threading._ThreadPoolWaitCallback");
            var run = queue == null ? null
                : queue.GetMethod("PerformWaitCallback", BindingFlags.NonPublic | BindingFlags.Static);
            if (run == null)
            {
                Debug.LogWarning("ArBridge: no thread-pool entry point found; gRPC calls may stall on WebGL");
                return;
            }
            runQueuedWork = (Func<bool>)Delegate.CreateDelegate(typeof(Func<bool>), run);
            var loop = PlayerLoop.GetCurrentPlayerLoop();
            for (int i = 0; i < loop.subSystemList.Length; i++)
            {
                if (loop.subSystemList[i].type != typeof(UnityEngine.PlayerLoop.Update)) continue;
                var systems = loop.subSystemList[i].subSystemList;
                var grown = new PlayerLoopSystem[systems.Length + 1];
                Array.Copy(systems, grown, systems.Length);
                grown[systems.Length] = new PlayerLoopSystem
                {
                    type = typeof(RunThreadPoolWork),
                    updateDelegate = () => runQueuedWork(),
                };
                loop.subSystemList[i].subSystemList = grown;
                PlayerLoop.SetPlayerLoop(loop);
                return;
            }
        }
    }
}
#endif
