// assembly: UnityEngine
// TESTS ONLY, never shipped. The UnityEngine members the package uses, declared as in
// UnityCsReference (2021.3.9f1 .. 6000.5.2f1): namespaces, names, signatures. Bodies are
// the least that lets the C# tests drive a component's lifecycle under mono.
using System;
using System.Net.Http;

namespace UnityEngine
{
    public class Object { }
    public class Component : Object
    {
        public Transform transform { get { return null; } }
        public GameObject gameObject { get { return null; } }
    }
    public sealed class GameObject : Object { }
    public class Behaviour : Component { public bool enabled { get; set; } }
    public class MonoBehaviour : Behaviour
    {
#if UNITY_2022_2_OR_NEWER
        public System.Threading.CancellationToken destroyCancellationToken { get { return default(System.Threading.CancellationToken); } }
#endif
    }
    public class Transform : Component
    {
        public Vector3 position { get; set; }
        public Quaternion rotation { get; set; }
    }
    public sealed class Camera : Behaviour { public static Camera main { get { return null; } } }
    public struct Vector3
    {
        public float x, y, z;
        public Vector3(float x, float y, float z) { this.x = x; this.y = y; this.z = z; }
    }
    public struct Quaternion
    {
        public float x, y, z, w;
        public Quaternion(float x, float y, float z, float w) { this.x = x; this.y = y; this.z = z; this.w = w; }
        public static Quaternion identity { get { return new Quaternion(0f, 0f, 0f, 1f); } }
    }
    public sealed class Application { public static string dataPath { get { return "."; } } }

    public abstract class PropertyAttribute : Attribute { protected PropertyAttribute() { } }
    [AttributeUsage(AttributeTargets.Class, AllowMultiple = false)]
    public sealed class AddComponentMenu : Attribute
    {
        public AddComponentMenu(string menuName) { }
        public AddComponentMenu(string menuName, int order) { }
    }
    [AttributeUsage(AttributeTargets.Field, Inherited = true, AllowMultiple = false)]
    public class TooltipAttribute : PropertyAttribute { public TooltipAttribute(string tooltip) { } }
    [AttributeUsage(AttributeTargets.Field, Inherited = true, AllowMultiple = false)]
    public sealed class TextAreaAttribute : PropertyAttribute
    {
        public TextAreaAttribute() { }
        public TextAreaAttribute(int minLines, int maxLines) { }
    }
    [AttributeUsage(AttributeTargets.Field, Inherited = true, AllowMultiple = false)]
    public sealed class RangeAttribute : PropertyAttribute { public RangeAttribute(float min, float max) { } }
    [AttributeUsage(AttributeTargets.Field, Inherited = true, AllowMultiple = false)]
    public sealed class SerializeField : Attribute { }

    public enum RuntimeInitializeLoadType
    {
        AfterSceneLoad = 0, BeforeSceneLoad = 1, AfterAssembliesLoaded = 2, BeforeSplashScreen = 3,
        SubsystemRegistration = 4,
    }
    [AttributeUsage(AttributeTargets.Method, AllowMultiple = false)]
    public class RuntimeInitializeOnLoadMethodAttribute : Scripting.PreserveAttribute
    {
        public RuntimeInitializeOnLoadMethodAttribute() { loadType = RuntimeInitializeLoadType.AfterSceneLoad; }
        public RuntimeInitializeOnLoadMethodAttribute(RuntimeInitializeLoadType loadType) { this.loadType = loadType; }
        public RuntimeInitializeLoadType loadType { get; private set; }
    }
    public sealed class Debug
    {
        public static void Log(object message) { Console.WriteLine(message); }
        public static void LogWarning(object message) { Console.WriteLine(message); }
        public static void LogError(object message) { Console.Error.WriteLine(message); }
    }
}

namespace UnityEngine.Scripting
{
    [AttributeUsage(AttributeTargets.Assembly | AttributeTargets.Class | AttributeTargets.Struct | AttributeTargets.Enum |
                    AttributeTargets.Constructor | AttributeTargets.Method | AttributeTargets.Property | AttributeTargets.Field |
                    AttributeTargets.Event | AttributeTargets.Interface | AttributeTargets.Delegate, Inherited = false)]
    public class PreserveAttribute : Attribute { }
}

// Runtime/Export/PlayerLoop/PlayerLoop.bindings.cs (2021.3.9f1)
namespace UnityEngine.PlayerLoop
{
    public struct Update { }
}

namespace UnityEngine.LowLevel
{
    public struct PlayerLoopSystem
    {
        public Type type;
        public PlayerLoopSystem[] subSystemList;
        public UpdateFunction updateDelegate;
        public IntPtr updateFunction;
        public IntPtr loopConditionFunction;
        public delegate void UpdateFunction();
    }
    public class PlayerLoop
    {
        // Stand-in state: a root with an empty Update phase, and the loop last set (tests read it).
        internal static PlayerLoopSystem current = new PlayerLoopSystem
        {
            subSystemList = new[] { new PlayerLoopSystem { type = typeof(UnityEngine.PlayerLoop.Update), subSystemList = new PlayerLoopSystem[0] } },
        };
        public static PlayerLoopSystem GetDefaultPlayerLoop() { return current; }
        public static PlayerLoopSystem GetCurrentPlayerLoop() { return current; }
        public static void SetPlayerLoop(PlayerLoopSystem loop) { current = loop; }
    }
}

namespace UnityEngine.Events
{
    public delegate void UnityAction<T0>(T0 arg0);
    public abstract class UnityEventBase { }
    [Serializable]
    public class UnityEvent<T0> : UnityEventBase
    {
        UnityAction<T0> calls;
        public UnityEvent() { }
        public void AddListener(UnityAction<T0> call) { calls += call; }
        public void RemoveListener(UnityAction<T0> call) { calls -= call; }
        public void Invoke(T0 arg0) { var c = calls; if (c != null) c(arg0); }
    }
}

#if UNITY_6000_5_OR_NEWER
namespace UnityEngine.Networking
{
    // Modules/UnityWebRequest/Public/UnityHttpMessageHandler.cs (6000.5): HttpClient on UnityWebRequest.
    public sealed class UnityHttpMessageHandler : HttpMessageHandler
    {
        protected override System.Threading.Tasks.Task<HttpResponseMessage> SendAsync(
            HttpRequestMessage request, System.Threading.CancellationToken cancellationToken)
        { throw new NotSupportedException("stand-in"); }
    }
}
#endif
