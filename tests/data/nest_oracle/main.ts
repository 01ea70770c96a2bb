import 'reflect-metadata';
import { Body, Controller, HttpCode, Module, Post, ValidationPipe } from '@nestjs/common';
import { NestFactory } from '@nestjs/core';
import { IsNotEmpty, IsOptional, IsString } from 'class-validator';

class CallRequestDto {
  @IsString() @IsNotEmpty() callID: string;
  @IsString() @IsNotEmpty() rclassification: string;
  @IsOptional() @IsString() customerID?: string;
  @IsString() @IsNotEmpty() callTime: string;
}

@Controller('call')
class CallController {
  @Post('request')
  @HttpCode(201)
  request(@Body() body: CallRequestDto) {
    if (body.rclassification === 'GOTOSUPPORT') {
      return { rclassification: body.rclassification, number: '5032505555', callID: body.callID, mqID: 'x', success: true };
    }
    return { success: false, message: `${body.rclassification} not found` };
  }
}

@Module({ controllers: [CallController] })
class AppModule {}

async function main() {
  const app = await NestFactory.create(AppModule, { logger: false });
  app.useGlobalPipes(new ValidationPipe());
  await app.listen(Number(process.env.PORT || 3999), '127.0.0.1');
}
main();
