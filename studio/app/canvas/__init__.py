"""The node canvas: a QGraphicsScene that follows the workflow model, and its view."""
