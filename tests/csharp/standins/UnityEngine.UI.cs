// assembly: UnityEngine.UI references: UnityEngine
// TESTS ONLY. com.unity.ugui's assembly (asmdef name "UnityEngine.UI"): uGUI Text.
namespace UnityEngine.UI
{
    public class Graphic : UnityEngine.Behaviour { }
    public class MaskableGraphic : Graphic { }
    public class Text : MaskableGraphic { public virtual string text { get; set; } }
}
