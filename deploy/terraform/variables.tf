variable "domain" {
  description = "Public DNS zone, e.g. example.com (its Route 53 hosted zone is zone_id)."
  type        = string
}

variable "zone_id" {
  description = "Route 53 public hosted zone id of domain (created outside this configuration)."
  type        = string
}

variable "global_name" {
  description = "The global name clients start from: <global_name>.<domain>."
  type        = string
  default     = "api"
}

variable "dns_ttl" {
  description = "TTL of every public record, seconds (30-60)."
  type        = number
  default     = 60
}

variable "home_region" {
  description = "AWS region of the discovery tier and of the primary copy of the secrets."
  type        = string
}

variable "internal_zone" {
  description = "Private zone for the discovery tier's names, associated with every VPC."
  type        = string
  default     = "tether.internal"
}

variable "regions" {
  description = "tether regions by code (server.region): where and how many servers."
  type = map(object({
    aws_region        = string
    servers           = number
    vpc_id            = string
    vpc_cidr          = string
    public_subnet_ids = list(string)
    ami_id            = string
    instance_type     = optional(string, "c7g.large")
    geo_bias          = optional(number, 0)
  }))
}

variable "discovery" {
  description = "The discovery tier: etcd members and discovery nodes in private subnets of home_region."
  type = object({
    vpc_id             = string
    vpc_cidr           = string
    private_subnet_ids = list(string)
    ami_id             = string
    etcd_ami_id        = string
    instance_type      = optional(string, "m7g.large")
    etcd_members       = optional(number, 3)
    discovery_nodes    = optional(number, 2)
  })
}

variable "monitoring_cidrs" {
  description = "Private CIDRs of Prometheus, allowed on the admin and discovery ports (besides the VPCs)."
  type        = list(string)
  default     = []
}

variable "tokens" {
  description = "tokens.issuer and tokens.audience."
  type = object({
    issuer   = string
    audience = string
  })
}

variable "login" {
  description = "The app's login path and JSON pointers to the subject and home region in its answer."
  type = object({
    upstream_path       = string
    subject_pointer     = string
    home_region_pointer = string
  })
  default = {
    upstream_path       = "/login"
    subject_pointer     = "/userId"
    home_region_pointer = "/homeRegion"
  }
}

variable "tags" {
  description = "Tags for every resource."
  type        = map(string)
  default     = { "app" = "tether" }
}
