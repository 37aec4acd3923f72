"""The workflow model, node specs and the workflow file format. No Qt, no torch."""

from studio.graph.fileformat import FORMAT_VERSION, dumps_workflow, load_workflow, loads_workflow
from studio.graph.registry import Registry
from studio.graph.spec import InputSpec, NodeSpec, OutputSpec, node
from studio.graph.types import ValueType, can_connect
from studio.graph.workflow import Frame, Layout, Link, Node, Note, Workflow

__all__ = [
    "FORMAT_VERSION",
    "Frame",
    "InputSpec",
    "Layout",
    "Link",
    "Node",
    "NodeSpec",
    "Note",
    "OutputSpec",
    "Registry",
    "ValueType",
    "Workflow",
    "can_connect",
    "dumps_workflow",
    "load_workflow",
    "loads_workflow",
    "node",
]
