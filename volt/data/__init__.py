"""Data: the in-memory Scene, processed scene folders, dataset readers and the demo generators."""

from volt.data.dataset import SceneDataset
from volt.data.io import read_scene, write_scene
from volt.data.readers import read_cloud
from volt.data.scene import Scene

__all__ = ["Scene", "SceneDataset", "read_cloud", "read_scene", "write_scene"]
