using System;
using ArBridge.V1;

namespace ArBridge.Client
{
    /// <summary>
    /// Typed reads of an <see cref="ActionCall"/>'s arguments by parameter name, e.g.
    /// <c>call.ObjectId("target")</c>, <c>call.Number("speed")</c>. Each throws
    /// KeyNotFoundException when the call has no such argument and InvalidCastException
    /// when the argument has another type (the server sends each as its parameter's type).
    /// </summary>
    public static class ActionCallExtensions
    {
        public static ActionArgument Argument(this ActionCall call, string name)
        {
            foreach (var argument in call.Arguments)
                if (argument.Name == name) return argument;
            throw new System.Collections.Generic.KeyNotFoundException(
                "action " + call.Name + " has no argument " + name);
        }

        /// <summary>The SceneObject.id of an OBJECT argument.</summary>
        public static string ObjectId(this ActionCall call, string name)
        {
            return Typed(call, name, ActionArgument.ValueOneofCase.ObjectId).ObjectId;
        }

        public static string String(this ActionCall call, string name)
        {
            return Typed(call, name, ActionArgument.ValueOneofCase.StringValue).StringValue;
        }

        public static double Number(this ActionCall call, string name)
        {
            return Typed(call, name, ActionArgument.ValueOneofCase.NumberValue).NumberValue;
        }

        public static long Integer(this ActionCall call, string name)
        {
            return Typed(call, name, ActionArgument.ValueOneofCase.IntegerValue).IntegerValue;
        }

        public static bool Bool(this ActionCall call, string name)
        {
            return Typed(call, name, ActionArgument.ValueOneofCase.BoolValue).BoolValue;
        }

        static ActionArgument Typed(ActionCall call, string name, ActionArgument.ValueOneofCase kind)
        {
            var argument = call.Argument(name);
            if (argument.ValueCase != kind)
                throw new InvalidCastException("argument " + name + " of " + call.Name + " is " +
                                               argument.ValueCase + ", not " + kind);
            return argument;
        }
    }
}
