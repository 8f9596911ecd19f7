//! Modbus acquisition (TCP and RTU): read planning, decoding and one polling
//! task per bus.
