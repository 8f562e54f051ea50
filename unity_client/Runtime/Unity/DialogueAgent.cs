using System;
using System.Collections.Generic;
using System.Threading.Tasks;
using ArBridge.Client;
using ArBridge.V1;
using UnityEngine;
using UnityEngine.Events;

namespace ArBridge.Unity
{
    /// <summary>
    /// A spoken or typed dialogue grounded in the scene (Converse). Ask() sends a
    /// turn, Interrupt() stops the reply in flight (barge-in); replies arrive as
    /// UnityEvents on the main thread. Over HTTP/2 it is one Converse stream that
    /// reconnects with backoff when the network drops; over gRPC-Web (WebGL) it
    /// is one Ask call per turn, on a session the server keeps. Closed when the
    /// object is destroyed.
    /// </summary>
    [AddComponentMenu("ArBridge/Dialogue Agent")]
    public sealed class DialogueAgent : MonoBehaviour
    {
        public ArBridgeEndpoint endpoint;
        [TextArea] public string systemPrompt = "";
        [Range(1, 1024)] public int maxNewTokens = 96;

        /// <summary>Each piece of the reply as it arrives.</summary>
        public UnityEvent<string> onTextChunk = new UnityEvent<string>();
        /// <summary>The whole reply, when it ends.</summary>
        public UnityEvent<string> onResponseComplete = new UnityEvent<string>();
        public UnityEvent<string> onError = new UnityEvent<string>();
        /// <summary>Each scene action a reply calls (declare them in <see cref="Actions"/>),
        /// as soon as the call is complete: start the animation while the sentence goes on.
        /// Arguments are typed: call.ObjectId("target"), call.Number("speed").</summary>
        public UnityEvent<ActionCall> onAction = new UnityEvent<ActionCall>();

        /// <summary>The actions replies may call, e.g. highlight(target: OBJECT). Set before
        /// the first Ask; a change applies to the next dialogue opened.</summary>
        public List<ActionDefinition> Actions = new List<ActionDefinition>();

        IDialogue session;
        Task starting;
        int closedCount;
        bool destroyed;

        /// <summary>Sends a user turn (fire and forget, for UI buttons and speech results).</summary>
        public async void Ask(string text)
        {
            if (destroyed) return;  // a late UI or speech callback: the agent is gone
            int generation = closedCount;
            try
            {
                await AskAsync(text);
            }
            catch (OperationCanceledException) { }
            catch (Exception e)
            {
                // A dialogue closed by OnDisable/OnDestroy meanwhile fails its pending calls
                // (cancelled stream, disposed session): that is not an error to show.
                if (generation == closedCount) onError.Invoke(e.Message);
            }
        }

        /// <summary>Sends a user turn, with a fresh scene when given. Returns the turn id.</summary>
        public async Task<uint> AskAsync(string text, SceneFeatures scene = null)
        {
            return await AskAsync(text, scene, null);
        }

        /// <summary>Sends a user turn with where the wearer looks and points as they speak
        /// ("what is this?"): the reply is about what the rays hit, and its completion
        /// says which object that was (Completion.Referents).</summary>
        public async Task<uint> AskAsync(string text, SceneFeatures scene, IEnumerable<Ray> rays)
        {
            if (destroyed) throw new ObjectDisposedException("DialogueAgent");
            var current = await EnsureStartedAsync();
            return await current.AskAsync(text, scene, null, rays);
        }

        /// <summary>Stops the reply being spoken (it completes as cancelled).</summary>
        public async void Interrupt()
        {
            try
            {
                var current = session;
                if (current != null && current.IsOpen) await current.InterruptAsync();
            }
            catch (OperationCanceledException) { }
            catch (ObjectDisposedException) { }  // the session closed meanwhile
            catch (Exception e)
            {
                onError.Invoke(e.Message);
            }
        }

        /// <summary>Grounds the next replies in a new scene.</summary>
        public async void UpdateScene(SceneFeatures scene)
        {
            if (destroyed) return;
            int generation = closedCount;
            try
            {
                var current = await EnsureStartedAsync();
                await current.UpdateSceneAsync(scene);
            }
            catch (OperationCanceledException) { }
            catch (Exception e)
            {
                if (generation == closedCount) onError.Invoke(e.Message);
            }
        }

        /// <summary>The open session: the one being opened is reused, a closed one replaced.</summary>
        async Task<IDialogue> EnsureStartedAsync()
        {
            if (session == null || starting == null || (starting.IsCompleted && !session.IsOpen))
            {
                if (session != null) session.Dispose();
                // Created on the main thread: the session raises its events there.
                var start = new ConverseStart
                {
                    SystemPrompt = systemPrompt,
                    Sampling = new SamplingParams { MaxNewTokens = (uint)maxNewTokens },
                };
                start.Actions.AddRange(Actions);
                if (endpoint.ChosenTransport == ArBridgeTransport.GrpcWeb)
                    session = new AskDialogue(() => endpoint.Client, start);  // a refreshed token applies
                else
                    session = endpoint.Client.StartDialogue(start);
                session.TextChunk += (turn, text) => onTextChunk.Invoke(text);
                session.ResponseComplete += (turn, completion) => onResponseComplete.Invoke(completion.Text);
                session.Error += (turn, error) => onError.Invoke(error.Message);
                session.ActionCalled += (turn, call) => onAction.Invoke(call);
                starting = session.StartAsync();
            }
            var current = session;
            await starting;
            if (current != session || current == null)
                throw new OperationCanceledException("the dialogue was closed");
            return current;
        }

        // Disabled or destroyed, the agent closes its dialogue: no stream is left open and no
        // event reaches a component that is gone. The next Ask opens a new one.
        void OnDisable()
        {
            Close();
        }

        void OnDestroy()
        {
            destroyed = true;
            Close();
        }

        void Close()
        {
            closedCount++;
            var current = session;
            session = null;
            starting = null;
            if (current != null) current.Dispose();
        }
    }
}
