//! MQTT machine sources: a `transport = "mqtt"` bus subscribes to topics on a
//! local broker and takes signal values from JSON payloads by JSON pointer.
