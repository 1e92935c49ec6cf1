pub mod chunk;
pub mod mysql_value;
