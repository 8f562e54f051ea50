"""A scene changed by a SceneDelta (checked first by validation.scene_delta)."""

from __future__ import annotations

from arbridge.v1 import types_pb2 as pb


def apply(base: pb.SceneFeatures, delta: pb.SceneDelta) -> pb.SceneFeatures:
    """`base` changed by `delta` (objects matched by id), as a new scene."""
    removed = set(delta.remove_ids)
    upserts = {obj.id: obj for obj in delta.upsert}
    out = pb.SceneFeatures()
    out.CopyFrom(base)
    del out.objects[:]
    for obj in base.objects:  # the order of the scene is kept: moved objects stay put
        if obj.id not in removed:
            out.objects.append(upserts.pop(obj.id, obj))
    out.objects.extend(upserts.values())
    if delta.HasField("camera_pose"):
        out.camera_pose.CopyFrom(delta.camera_pose)
    if delta.location_hint:
        out.location_hint = delta.location_hint
    if delta.scene_version:
        out.scene_version = delta.scene_version
    return out
