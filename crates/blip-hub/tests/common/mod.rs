pub mod fakehub;
