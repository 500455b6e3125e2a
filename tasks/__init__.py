"""Built-in task families: every module here registers one with `@register_task` and is discovered by file."""
