using System;
using System.Text;
using System.Threading;
using ArBridge.V1;
using Grpc.Core;
using UnityEngine;
using UnityEngine.Events;

namespace ArBridge.Unity
{
    /// <summary>
    /// Streams a scene caption into a UI text field word by word, on the main
    /// thread. Each Describe() clears the field and replaces the caption in
    /// flight; everything is cancelled when the object is destroyed.
    /// </summary>
    [AddComponentMenu("ArBridge/Caption Streamer")]
    public sealed class CaptionStreamer : MonoBehaviour
    {
        public ArBridgeEndpoint endpoint;
        [Tooltip("uGUI Text to write into (optional).")]
        public UnityEngine.UI.Text uiText;
#if ARBRIDGE_TMP
        [Tooltip("TextMeshPro text to write into (optional).")]
        public TMPro.TMP_Text tmpText;
#endif
        [Tooltip("Empty: the server composes the caption from the scene (every object " +
                 "counted and placed, within maxNewTokens). Set: the model words it instead.")]
        [TextArea] public string instruction = "";
        [Range(1, 512)] public int maxNewTokens = 48;

        public UnityEvent<string> onCaptionChanged = new UnityEvent<string>();
        public UnityEvent<string> onCaptionComplete = new UnityEvent<string>();
        public UnityEvent<string> onError = new UnityEvent<string>();

        readonly CancellationTokenSource lifetime = new CancellationTokenSource();
        CancellationTokenSource current;

        /// <summary>The caption so far.</summary>
        public string Caption { get; private set; } = "";

        /// <summary>Captions <paramref name="scene"/>, replacing any caption in flight.</summary>
        bool destroyed;

        public async void Describe(SceneFeatures scene)
        {
            if (destroyed) return;
            if (current != null) current.Cancel();
            var mine = CancellationTokenSource.CreateLinkedTokenSource(lifetime.Token);
            current = mine;
            SetCaption("");
            var request = new DescribeSceneRequest
            {
                Scene = scene,
                Instruction = instruction,
                Sampling = new SamplingParams { MaxNewTokens = (uint)maxNewTokens },
            };
            var text = new StringBuilder();
            try
            {
                // Called from the main thread, so the chunk callback runs there too.
                var completion = await endpoint.Client.DescribeSceneAsync(request, chunk =>
                {
                    if (mine.IsCancellationRequested || chunk.SequenceIndex != 0) return;
                    text.Append(chunk.Text);
                    SetCaption(text.ToString());
                }, mine.Token);
                if (!mine.IsCancellationRequested && completion != null) onCaptionComplete.Invoke(completion.Text);
            }
            catch (OperationCanceledException) { }
            catch (RpcException e)
            {
                if (!mine.IsCancellationRequested) onError.Invoke(e.StatusCode + ": " + e.Status.Detail);
            }
            catch (Exception e)
            {
                if (!mine.IsCancellationRequested) onError.Invoke(e.Message);
            }
            finally
            {
                if (current == mine) current = null;
                mine.Dispose();
            }
        }

        /// <summary>Stops the caption in flight; the text stays as it is.</summary>
        public void Cancel()
        {
            if (current != null) current.Cancel();
        }

        void SetCaption(string value)
        {
            Caption = value;
            if (uiText != null) uiText.text = value;
#if ARBRIDGE_TMP
            if (tmpText != null) tmpText.text = value;
#endif
            onCaptionChanged.Invoke(value);
        }

        // A disabled streamer stops writing captions; Describe starts again after OnEnable.
        void OnDisable()
        {
            Cancel();
        }

        void OnDestroy()
        {
            destroyed = true;
            lifetime.Cancel();
            lifetime.Dispose();
        }
    }
}
