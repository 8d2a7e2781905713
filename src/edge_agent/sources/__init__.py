"""Sources behind one small interface; implementations are imported by name when configured."""
