// Caption demo: describes a hand-made scene when it starts (and whenever
// DescribeNow is called, e.g. from a UI Button). In an AR app the objects come
// from the detector (AR Foundation, Vision Pro, Quest scene API) instead.
//
// Set up: an ArBridgeEndpoint (address of `arbridge serve`), a CaptionStreamer
// pointing at it and at a Text or TextMeshPro field, and this component.
using System;
using System.Collections.Generic;
using ArBridge.Unity;
using UnityEngine;
using V1 = ArBridge.V1;  // its Pose and Quaternion would clash with UnityEngine's

public sealed class CaptionDemo : MonoBehaviour
{
    [Serializable]
    public class DetectedObject
    {
        public string id = "obj-1";
        public string label = "chair";
        public string color = "red";
        [Tooltip("World position in metres (Unity axes: x right, y up, z forward).")]
        public Vector3 position = new Vector3(-1f, 0.5f, 1.2f);
    }

    public CaptionStreamer streamer;
    public string locationHint = "a small kitchen";
    public List<DetectedObject> objects = new List<DetectedObject>
    {
        new DetectedObject(),
        new DetectedObject { id = "obj-2", label = "table", color = "", position = new Vector3(0.2f, 0.4f, 2f) },
        new DetectedObject { id = "obj-3", label = "lamp", color = "", position = new Vector3(3.5f, 1.2f, 4f) },
    };

    void Start()
    {
        DescribeNow();
    }

    public void DescribeNow()
    {
        var scene = new V1.SceneFeatures { LocationHint = locationHint };
        var eye = Camera.main != null ? Camera.main.transform : transform;
        scene.CameraPose = ToPose(eye.position, eye.rotation);
        foreach (var o in objects)
        {
            var detected = new V1.SceneObject { Id = o.id, Label = o.label, Pose = ToPose(o.position, Quaternion.identity) };
            if (!string.IsNullOrEmpty(o.color)) detected.Attributes["color"] = o.color;
            scene.Objects.Add(detected);
        }
        streamer.Describe(scene);
    }

    static V1.Pose ToPose(Vector3 p, Quaternion q)
    {
        return new V1.Pose
        {
            Position = new V1.Vec3 { X = p.x, Y = p.y, Z = p.z },
            Rotation = new V1.Quaternion { X = q.x, Y = q.y, Z = q.z, W = q.w },
        };
    }
}
