using System;
using Grpc.Core;

namespace ArBridge.Client
{
    /// <summary>
    /// When a dialogue stream breaks, how long to wait before reopening it:
    /// exponential backoff with jitter, capped, for a limited number of tries.
    /// </summary>
    public sealed class ReconnectPolicy
    {
        public TimeSpan InitialDelay = TimeSpan.FromMilliseconds(500);
        public TimeSpan MaxDelay = TimeSpan.FromSeconds(15);
        public double Multiplier = 2.0;
        /// <summary>Each delay is scaled by a random factor in [1 - Jitter, 1 + Jitter].</summary>
        public double Jitter = 0.2;
        /// <summary>Consecutive failed attempts before the session gives up; 0 = never reconnect.</summary>
        public int MaxAttempts = 8;

        readonly Random random;

        public ReconnectPolicy(int? seed = null)
        {
            random = seed.HasValue ? new Random(seed.Value) : new Random();
        }

        /// <summary>The delay before attempt number <paramref name="attempt"/> (1-based).</summary>
        public TimeSpan DelayBefore(int attempt)
        {
            double ms = InitialDelay.TotalMilliseconds * Math.Pow(Multiplier, Math.Max(0, attempt - 1));
            ms = Math.Min(ms, MaxDelay.TotalMilliseconds);
            double factor;
            lock (random) factor = 1.0 + Jitter * (2.0 * random.NextDouble() - 1.0);
            return TimeSpan.FromMilliseconds(Math.Max(0.0, ms * factor));
        }

        /// <summary>
        /// Statuses worth reconnecting after: the transport or server went away.
        /// Cancelled counts (the session's own cancellation is handled before this
        /// is asked): a server shutting down cancels the streams still open when
        /// its grace period ends. Anything the server meant (bad input, auth,
        /// limits) is reported instead.
        /// </summary>
        public static bool IsTransient(StatusCode code)
        {
            return code == StatusCode.Unavailable || code == StatusCode.Internal
                || code == StatusCode.Unknown || code == StatusCode.Aborted
                || code == StatusCode.Cancelled;
        }
    }
}
