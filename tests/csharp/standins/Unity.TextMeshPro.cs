// assembly: Unity.TextMeshPro references: UnityEngine
// TESTS ONLY. TextMeshPro's assembly (asmdef name "Unity.TextMeshPro"; com.unity.textmeshpro
// 3.x, and inside com.unity.ugui 2.x from Unity 6).
namespace TMPro
{
    public abstract class TMP_Text : UnityEngine.Behaviour { public virtual string text { get; set; } }
}
