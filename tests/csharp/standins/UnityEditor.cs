// assembly: UnityEditor references: UnityEngine
// TESTS ONLY. Editor/Mono/BuildPipeline/BuildPipelineInterfaces.cs (2021.3.9f1, 6000.x):
// IUnityLinkerProcessor lives in UnityEditor.Build; its data type in UnityEditor.UnityLinker.
namespace UnityEditor.Build
{
    public interface IOrderedCallback { int callbackOrder { get; } }
    public interface IUnityLinkerProcessor : IOrderedCallback
    {
        string GenerateAdditionalLinkXmlFile(UnityEditor.Build.Reporting.BuildReport report,
                                             UnityEditor.UnityLinker.UnityLinkerBuildPipelineData data);
    }
}

namespace UnityEditor.Build.Reporting
{
    public sealed class BuildReport : UnityEngine.Object { }
}

namespace UnityEditor.UnityLinker
{
    public sealed class UnityLinkerBuildPipelineData
    {
        public readonly BuildTarget target;
        public readonly string inputDirectory;
        public UnityLinkerBuildPipelineData(BuildTarget target, string inputDirectory)
        {
            this.target = target;
            this.inputDirectory = inputDirectory;
        }
    }
}

namespace UnityEditor
{
    public enum BuildTarget { StandaloneWindows64 = 19, Android = 13, iOS = 9, WebGL = 20, StandaloneLinux64 = 24 }
}
