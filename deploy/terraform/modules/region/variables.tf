variable "name" {
  description = "Region code used by tether (server.region) and in DNS names, e.g. \"eu\"."
  type        = string
  validation {
    condition     = can(regex("^[a-z0-9-]{1,32}$", var.name))
    error_message = "name must be 1-32 characters of a-z, 0-9 and '-'."
  }
}

variable "aws_region" {
  description = "AWS region the servers run in, e.g. eu-west-1 (also the geoproximity location)."
  type        = string
}

variable "servers" {
  description = "Number of servers (app + tether proxy per instance). Server ids are <name>-1 .. <name>-N."
  type        = number
  validation {
    condition     = var.servers >= 1 && var.servers <= 50
    error_message = "servers must be between 1 and 50."
  }
}

variable "vpc_id" {
  description = "VPC of this region."
  type        = string
}

variable "vpc_cidr" {
  description = "CIDR of this region's VPC."
  type        = string
}

variable "public_subnet_ids" {
  description = "Public subnets for the servers (spread over availability zones, round robin)."
  type        = list(string)
}

variable "ami_id" {
  description = "Image with /usr/local/bin/tether, the AWS CLI, deploy/systemd units and the app as app_service (see docs/deploy.md)."
  type        = string
}

variable "instance_type" {
  description = "EC2 instance type of a server."
  type        = string
  default     = "c7g.large"
}

variable "app_service" {
  description = "systemd unit of the app on the image, started before the proxy."
  type        = string
  default     = "app.service"
}

variable "app_port" {
  description = "Port the app listens on at 127.0.0.1 (the proxy's upstream)."
  type        = number
  default     = 3000
}

variable "app_health_path" {
  description = "The app's health path (upstream.health_path)."
  type        = string
  default     = "/health"
}

variable "client_port" {
  description = "Public client port of the proxy (HTTPS)."
  type        = number
  default     = 443
}

variable "admin_port" {
  description = "Proxy admin listener (/metrics, /healthz, /registry); never public."
  type        = number
  default     = 9081
}

variable "monitoring_cidrs" {
  description = "Private CIDRs allowed to reach the admin port (Prometheus), besides this VPC."
  type        = list(string)
  default     = []
  validation {
    condition     = alltrue([for c in var.monitoring_cidrs : c != "0.0.0.0/0" && c != "::/0"])
    error_message = "The admin port must stay private: 0.0.0.0/0 and ::/0 are refused."
  }
}

variable "domain" {
  description = "DNS zone name, e.g. example.com."
  type        = string
}

variable "zone_id" {
  description = "Route 53 public hosted zone id of domain."
  type        = string
}

variable "global_name" {
  description = "Label of the global name clients start from (<global_name>.<domain>)."
  type        = string
  default     = "api"
}

variable "dns_ttl" {
  description = "TTL of every record, seconds (30-60: clients follow failovers quickly)."
  type        = number
  default     = 60
  validation {
    condition     = var.dns_ttl >= 30 && var.dns_ttl <= 60
    error_message = "dns_ttl must be between 30 and 60 seconds."
  }
}

variable "health_check_interval" {
  description = "Route 53 health check request interval, seconds (10 or 30)."
  type        = number
  default     = 10
}

variable "health_check_failure_threshold" {
  description = "Consecutive failures before Route 53 marks a server unhealthy."
  type        = number
  default     = 3
  validation {
    condition     = var.health_check_failure_threshold >= 2 && var.health_check_failure_threshold <= 3
    error_message = "Use 2 or 3: fast to fail over, not flapping on one lost probe."
  }
}

variable "geo_bias" {
  description = "Geoproximity bias of this region (-99..99)."
  type        = number
  default     = 0
}

variable "discovery_urls" {
  description = "Discovery node URLs for the proxies (discovery.urls)."
  type        = list(string)
}

variable "discovery_cidrs" {
  description = "CIDRs of the discovery nodes (egress to discovery_port)."
  type        = list(string)
}

variable "discovery_port" {
  description = "Discovery nodes' port."
  type        = number
  default     = 7070
}

variable "kms_key_arn" {
  description = "KMS key (in aws_region) for the SSM parameters and the secret replicas."
  type        = string
}

variable "secret_names" {
  description = "Secrets Manager names (replicated into aws_region): keyring, cluster_token, tls_cert, tls_key."
  type = object({
    keyring       = string
    cluster_token = string
    tls_cert      = string
    tls_key       = string
  })
}

variable "tokens" {
  description = "tokens.issuer and tokens.audience of the proxies."
  type = object({
    issuer   = string
    audience = string
  })
}

variable "login" {
  description = "The app's login path and where the subject / home region are in its answer (JSON pointers)."
  type = object({
    upstream_path       = string
    subject_pointer     = string
    home_region_pointer = string
  })
}

variable "tags" {
  description = "Tags for every resource."
  type        = map(string)
  default     = {}
}
