pub mod chunk;
pub mod mysql_value;
pub mod pack;
pub mod work;
