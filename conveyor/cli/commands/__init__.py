"""What each ``conveyor`` verb does: one function per verb, ``cmd_<verb>(args) -> exit status``."""
