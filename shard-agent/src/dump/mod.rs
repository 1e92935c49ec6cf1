pub mod chunk;
pub mod mysql_value;
pub mod work;
