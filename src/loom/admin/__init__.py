"""What the `loom` command does besides serving the API: the start-up report (`banner`) and a project's
export and import (`archive`). It sits above the container and may use everything; nothing in Loom
imports it but the CLI. (`loom.ops` is the other way up: what every layer reports through.)"""
