"""Hand-made scenes for the tests: objects by label and position, a wearer at 1.6 m."""

from __future__ import annotations

from arbridge.v1 import types_pb2 as pb


def thing(i, label, x, y, z, **attributes) -> pb.SceneObject:
    return pb.SceneObject(id=f"o{i}", label=label, confidence=0.9, attributes=attributes,
                          pose=pb.Pose(position=pb.Vec3(x=x, y=y, z=z),
                                       rotation=pb.Quaternion(w=1.0)))


def room(*objects, rotation=None) -> pb.SceneFeatures:
    camera = pb.Pose(position=pb.Vec3(y=1.6), rotation=rotation or pb.Quaternion(w=1.0))
    return pb.SceneFeatures(camera_pose=camera, objects=list(objects))
