// TESTS ONLY, never shipped. Stand-ins with the names and signatures of the
// Unity, Grpc.Net.Client, Grpc.Net.Client.Web, YetAnotherHttpHandler and
// TextMeshPro members that the package's Unity-side scripts use, so that mcs
// can check those scripts (C# 7.2, names, overloads, ambiguities) here, where
// none of those libraries exist. It proves the scripts are well-formed C#
// against these signatures; only a Unity build proves them against the real
// libraries.
using System;
using System.Net.Http;

namespace UnityEngine
{
    public class Object { }
    public class Component : Object { public Transform transform { get { return null; } } }
    public class Behaviour : Component { }
    public class MonoBehaviour : Behaviour { }
    public class Transform : Component
    {
        public Vector3 position { get; set; }
        public Quaternion rotation { get; set; }
    }
    public class Camera : Behaviour { public static Camera main { get { return null; } } }
    public struct Vector3
    {
        public float x, y, z;
        public Vector3(float x, float y, float z) { this.x = x; this.y = y; this.z = z; }
    }
    public struct Quaternion
    {
        public float x, y, z, w;
        public static Quaternion identity { get { return new Quaternion { w = 1 }; } }
    }
    public static class Application { public static string dataPath { get { return "."; } } }
    [AttributeUsage(AttributeTargets.Class)] public sealed class AddComponentMenu : Attribute { public AddComponentMenu(string menuName) { } }
    [AttributeUsage(AttributeTargets.Field)] public sealed class TooltipAttribute : Attribute { public TooltipAttribute(string tooltip) { } }
    [AttributeUsage(AttributeTargets.Field)] public sealed class TextAreaAttribute : Attribute { }
    [AttributeUsage(AttributeTargets.Field)] public sealed class RangeAttribute : Attribute { public RangeAttribute(float min, float max) { } }
}

namespace UnityEngine.Events
{
    public class UnityEvent<T0> { public void Invoke(T0 arg0) { } }
}

namespace UnityEngine.UI
{
    public class Text : UnityEngine.Behaviour { public string text { get; set; } }
}

namespace TMPro
{
    public class TMP_Text : UnityEngine.Behaviour { public string text { get; set; } }
}

namespace UnityEditor.Build
{
    public interface IOrderedCallback { int callbackOrder { get; } }
}

namespace UnityEditor.Build.Reporting
{
    public sealed class BuildReport { }
}

namespace UnityEditor.UnityLinker
{
    public sealed class UnityLinkerBuildPipelineData { }
    public interface IUnityLinkerProcessor : UnityEditor.Build.IOrderedCallback
    {
        string GenerateAdditionalLinkXmlFile(UnityEditor.Build.Reporting.BuildReport report, UnityLinkerBuildPipelineData data);
    }
}

namespace Grpc.Net.Client
{
    public sealed class GrpcChannelOptions
    {
        public HttpMessageHandler HttpHandler { get; set; }
        public bool DisposeHttpClient { get; set; }
        public int? MaxReceiveMessageSize { get; set; }
    }
    public sealed class GrpcChannel : Grpc.Core.ChannelBase, IDisposable
    {
        GrpcChannel(string address) : base(address) { }
        public static GrpcChannel ForAddress(string address, GrpcChannelOptions channelOptions) { return new GrpcChannel(address); }
        public override Grpc.Core.CallInvoker CreateCallInvoker() { throw new NotImplementedException(); }
        public void Dispose() { }
    }
}

namespace Grpc.Net.Client.Web
{
    public enum GrpcWebMode { GrpcWebText, GrpcWeb }
    public sealed class GrpcWebHandler : DelegatingHandler
    {
        public GrpcWebHandler(GrpcWebMode mode, HttpMessageHandler innerHandler) : base(innerHandler) { }
    }
}

namespace Cysharp.Net.Http
{
    public class YetAnotherHttpHandler : HttpMessageHandler
    {
        public bool Http2Only { get; set; }
        public string RootCertificates { get; set; }
        protected override System.Threading.Tasks.Task<HttpResponseMessage> SendAsync(HttpRequestMessage request, System.Threading.CancellationToken cancellationToken)
        { throw new NotImplementedException(); }
    }
}
