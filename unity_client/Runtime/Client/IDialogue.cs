using System;
using System.Collections.Generic;
using System.Threading.Tasks;
using ArBridge.V1;

namespace ArBridge.Client
{
    /// <summary>
    /// A grounded dialogue, whatever carries it: <see cref="DialogueSession"/>
    /// (Converse, one bidirectional stream; HTTP/2) or <see cref="AskDialogue"/>
    /// (Ask, one call per turn; works over gRPC-Web too). Events are raised on
    /// the SynchronizationContext that created the dialogue.
    /// </summary>
    public interface IDialogue : IDisposable
    {
        /// <summary>(turn id, text) for every piece of a reply, in order.</summary>
        event Action<uint, string> TextChunk;
        /// <summary>(turn id, completion) when a reply ends, however it ends.</summary>
        event Action<uint, Completion> ResponseComplete;
        /// <summary>(turn id, call) for each scene action the reply calls, as soon as the
        /// call is complete (the sentence around it goes on streaming). Its arguments are
        /// typed (see <see cref="ActionCallExtensions"/>); object arguments are scene ids.</summary>
        event Action<uint, ActionCall> ActionCalled;
        /// <summary>A failure: of one turn (turn id) or of the whole dialogue (turn id 0).</summary>
        event Action<uint, Exception> Error;

        bool IsOpen { get; }
        Task StartAsync();
        /// <summary>
        /// Sends a user turn (after a scene update, when given); returns its turn id.
        /// DialogueSession returns once the turn is sent and throws if it could not be;
        /// AskDialogue returns when the reply has ended and reports failures as Error.
        /// </summary>
        Task<uint> AskAsync(string text, SceneFeatures sceneUpdate = null, SamplingParams sampling = null,
                            IEnumerable<Ray> rays = null);
        /// <summary>Stops the reply in flight.</summary>
        Task InterruptAsync();
        /// <summary>Grounds the next replies in a new scene.</summary>
        Task UpdateSceneAsync(SceneFeatures scene);
    }

    /// <summary>The dialogue so far, kept client-side to restart a lost session.</summary>
    sealed class DialogueLog
    {
        readonly System.Collections.Generic.List<DialogueTurn> turns = new System.Collections.Generic.List<DialogueTurn>();

        public int MaxTurns = 256;

        public void Record(string question, string answer)
        {
            turns.Add(new DialogueTurn { Role = Role.User, Text = question });
            if (!string.IsNullOrEmpty(answer)) turns.Add(new DialogueTurn { Role = Role.Assistant, Text = answer });
            if (turns.Count > MaxTurns) turns.RemoveRange(0, turns.Count - MaxTurns);
        }

        public void AddRange(System.Collections.Generic.IEnumerable<DialogueTurn> earlier) { turns.AddRange(earlier); }

        public System.Collections.Generic.List<DialogueTurn> Snapshot() { return new System.Collections.Generic.List<DialogueTurn>(turns); }
    }
}
