"""Worker-thread code behind the widgets (training and prediction jobs, the worker helpers): it never touches Qt
widgets; results reach the main thread through signals and single-slot mailboxes."""
