"""The desktop app (Qt only): window, canvas, inspector, library, undo commands.

Nothing here imports torch at module level: the window shows before the engine loads.
"""
